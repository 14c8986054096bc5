//! `balancer flows [--service S] [--limit N]`: the connection-tracking
//! entries, which client talks to which backend.

use clap::Args;

use super::{
    SocketArg,
    format::{self, Align, Table},
    unexpected,
};
use crate::control::{FlowList, Reply, Request, client};

#[derive(Args, Debug)]
pub struct FlowsArgs {
    /// Only this service's flows.
    #[arg(long, value_name = "S")]
    pub service: Option<String>,
    /// Show at most N flows (the daemon's default when left out).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print the flows as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(args: &FlowsArgs) -> anyhow::Result<()> {
    let request = Request::Flows {
        service: args.service.clone(),
        limit: args.limit,
    };
    let list = match client::request(&args.socket.socket, &request)? {
        Reply::Flows(list) => list,
        other => return Err(unexpected("flows", &other)),
    };
    format::print(&if args.json {
        format::json(&list)
    } else {
        render(&list)
    })
}

/// A table of the flows, then `N of TOTAL flows` when the list was cut.
pub fn render(list: &FlowList) -> String {
    if list.total == 0 && list.flows.is_empty() {
        return "no flows\n".to_owned();
    }
    let mut table = Table::new(&[
        ("CLIENT", Align::Left),
        ("BACKEND", Align::Left),
        ("SERVICE", Align::Left),
        ("PROTO", Align::Left),
        ("STATE", Align::Left),
        ("ACTIVE", Align::Left),
        ("IDLE", Align::Right),
        ("AGE", Align::Right),
    ]);
    for f in &list.flows {
        table.row(vec![
            f.client.clone(),
            f.backend.clone(),
            f.service.clone(),
            f.protocol.clone(),
            f.state.clone(),
            if f.active { "yes" } else { "no" }.to_owned(),
            format::duration_ms(f.idle_ms),
            format::duration_ms(f.age_ms),
        ]);
    }
    let mut out = table.render("");
    let shown = list.flows.len() as u64;
    if shown < list.total {
        out.push_str(&format!("{shown} of {} flows\n", list.total));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::FlowEntry;

    fn flow(client: &str, state: &str, active: bool, idle_ms: u64, age_ms: u64) -> FlowEntry {
        FlowEntry {
            service: "chat".into(),
            protocol: "tcp".into(),
            client: client.into(),
            backend: "198.18.1.12:3000".into(),
            state: state.into(),
            active,
            idle_ms,
            age_ms,
        }
    }

    #[test]
    fn cli_flows_table_and_truncation() {
        let list = FlowList {
            flows: vec![
                flow("198.18.0.7:40112", "open", true, 250, 3_250),
                flow(
                    "[2001:db8::7]:51000",
                    "fin-client",
                    false,
                    61_000,
                    3_600_000,
                ),
            ],
            total: 5,
        };
        let got = render(&list);
        let want = "\
CLIENT               BACKEND           SERVICE  PROTO  STATE       ACTIVE   IDLE    AGE
198.18.0.7:40112     198.18.1.12:3000  chat     tcp    open        yes     250ms   3.2s
[2001:db8::7]:51000  198.18.1.12:3000  chat     tcp    fin-client  no      1m01s  1h00m
2 of 5 flows
";
        assert_eq!(got, want, "got:\n{got}");
        let whole = FlowList { total: 2, ..list };
        assert!(!render(&whole).contains(" of "), "{}", render(&whole));
    }

    #[test]
    fn cli_flows_empty() {
        assert_eq!(
            render(&FlowList {
                flows: vec![],
                total: 0
            }),
            "no flows\n"
        );
        assert_eq!(
            render(&FlowList {
                flows: vec![],
                total: 3
            }),
            "CLIENT  BACKEND  SERVICE  PROTO  STATE  ACTIVE  IDLE  AGE\n0 of 3 flows\n"
        );
    }
}
