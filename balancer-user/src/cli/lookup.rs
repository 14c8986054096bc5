//! `balancer lookup SERVICE CLIENT_IP [--port P]`: the backend a new
//! connection from the client gets now (its affinity entry, or the Maglev
//! table), as the kernel program would choose it.

use clap::Args;

use super::{SocketArg, format, unexpected};
use crate::control::{LookupAnswer, Reply, Request, client};

#[derive(Args, Debug)]
pub struct LookupArgs {
    /// The service's name.
    pub service: String,
    /// The client's address, passed to the daemon as written.
    #[arg(value_name = "CLIENT_IP")]
    pub client: String,
    /// The client's source port (only `four-tuple` services hash it).
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

impl LookupArgs {
    fn request(&self) -> Request {
        Request::Lookup {
            service: self.service.clone(),
            client: self.client.clone(),
            port: self.port,
        }
    }
}

pub fn run(args: &LookupArgs) -> anyhow::Result<()> {
    let answer = match client::request(&args.socket.socket, &args.request())? {
        Reply::Lookup(a) => a,
        other => return Err(unexpected("lookup", &other)),
    };
    format::print(&if args.json {
        format::json(&answer)
    } else {
        render(&answer)
    })
}

/// `CLIENT -> BACKEND (how)`, one line.
pub fn render(a: &LookupAnswer) -> String {
    let Some(backend) = &a.backend else {
        return format!("{} -> no backend (none takes new clients)\n", a.client);
    };
    let how = match (a.via.as_str(), a.slot, a.affinity_idle_ms) {
        ("affinity", _, Some(idle)) => format!("affinity, idle {}", format::duration_ms(idle)),
        ("maglev", Some(slot), _) => format!("maglev slot {slot}"),
        (via, _, _) => via.to_owned(),
    };
    format!("{} -> {backend} ({how})\n", a.client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        backend: Option<&str>,
        via: &str,
        slot: Option<u32>,
        idle: Option<u64>,
    ) -> LookupAnswer {
        LookupAnswer {
            service: "chat".into(),
            client: "198.18.0.7".into(),
            backend: backend.map(str::to_owned),
            via: via.into(),
            slot,
            affinity_idle_ms: idle,
        }
    }

    #[test]
    fn cli_lookup_renders_each_way_of_choosing() {
        let b = Some("198.18.1.12:3000");
        assert_eq!(
            render(&answer(b, "maglev", Some(1234), None)),
            "198.18.0.7 -> 198.18.1.12:3000 (maglev slot 1234)\n"
        );
        assert_eq!(
            render(&answer(b, "affinity", Some(1234), Some(3_210))),
            "198.18.0.7 -> 198.18.1.12:3000 (affinity, idle 3.2s)\n"
        );
        assert_eq!(
            render(&answer(b, "affinity", None, None)),
            "198.18.0.7 -> 198.18.1.12:3000 (affinity)\n"
        );
        assert_eq!(
            render(&answer(b, "maglev", None, None)),
            "198.18.0.7 -> 198.18.1.12:3000 (maglev)\n"
        );
        assert_eq!(
            render(&answer(None, "maglev", Some(7), None)),
            "198.18.0.7 -> no backend (none takes new clients)\n"
        );
    }

    #[test]
    fn cli_lookup_request_passes_arguments_unchanged() {
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: LookupArgs,
        }
        let cli = Cli::try_parse_from(["lookup", "chat", "2001:db8::7", "--port", "5555"]).unwrap();
        assert_eq!(
            cli.args.request(),
            Request::Lookup {
                service: "chat".into(),
                client: "2001:db8::7".into(),
                port: Some(5555)
            }
        );
        assert!(!cli.args.json);
        assert!(Cli::try_parse_from(["lookup", "chat", "198.18.0.7", "--port", "65536"]).is_err());
    }
}
