//! A newc (`070701`) cpio archive, the format the kernel unpacks as its
//! initramfs, written in Rust: a [`Tree`] of guest paths (directories,
//! files copied from the host or made here, symlinks) written in path order,
//! so every directory comes before what it holds.
//!
//! Host files are added by their host path ([`Tree::add_host_path`]): each
//! symlink met on the way (`/lib -> usr/lib`, `libbpf.so.1 ->
//! libbpf.so.1.1.0`) goes into the guest as the same symlink, so the paths
//! that `ldd` and ELF interpreters name resolve there as they do on the host.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, bail, ensure};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const TRAILER: &str = "TRAILER!!!";
/// Symlinks followed while resolving one host path, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// One guest path's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    /// A copy of a host file, read when the archive is written.
    HostFile {
        source: PathBuf,
        mode: u32,
    },
    /// Bytes made here (the init script, decompressed modules, /etc files).
    Data {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(PathBuf),
}

/// The guest's file system, keyed by absolute guest path.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `entry` at the absolute guest path `path`, creating the
    /// directories above it. The same entry twice is fine; a different one
    /// at a taken path, or a path below a non-directory, is an error.
    pub fn insert(&mut self, path: impl Into<PathBuf>, entry: Entry) -> Result<()> {
        let path = path.into();
        ensure!(
            path.is_absolute()
                && path
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
            "initramfs: {} is not a plain absolute path",
            path.display()
        );
        for dir in path.ancestors().skip(1).filter(|d| d.parent().is_some()) {
            match self.entries.get(dir) {
                None => {
                    self.entries.insert(dir.to_owned(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(other) => bail!(
                    "initramfs: {} is {other:?}, not a directory, so it cannot hold {}",
                    dir.display(),
                    path.display()
                ),
            }
        }
        match self.entries.get(&path) {
            None => {
                self.entries.insert(path, entry);
                Ok(())
            }
            Some(old) if *old == entry => Ok(()),
            Some(old) => bail!(
                "initramfs: {} is already {old:?}, cannot make it {entry:?}",
                path.display()
            ),
        }
    }

    /// A file with content made here.
    pub fn add_data(
        &mut self,
        path: impl Into<PathBuf>,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<()> {
        self.insert(
            path,
            Entry::Data {
                data: data.into(),
                mode,
            },
        )
    }

    /// A host file (or directory) at another guest path; its permission bits
    /// are kept. Symlinks in `source` are followed, not copied.
    pub fn add_host_file_as(&mut self, path: impl Into<PathBuf>, source: &Path) -> Result<()> {
        let meta =
            fs::metadata(source).with_context(|| format!("initramfs: {}", source.display()))?;
        ensure!(
            meta.is_file(),
            "initramfs: {} is not a regular file",
            source.display()
        );
        let mode = meta.permissions().mode() & 0o7777;
        self.insert(
            path,
            Entry::HostFile {
                source: source.to_owned(),
                mode,
            },
        )
    }

    /// The host path `path` at the same guest path, with every symlink on the
    /// way (in its directories and at its end) copied as a symlink and
    /// followed to its target, which is added too. A directory is added
    /// with all it holds.
    pub fn add_host_path(&mut self, path: &Path) -> Result<()> {
        ensure!(
            path.is_absolute(),
            "initramfs: host path {} is not absolute",
            path.display()
        );
        // `done` never holds a symlink, so `..` can pop it lexically.
        let mut done = PathBuf::from("/");
        let mut todo: Vec<OsString> = components(path);
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                done.pop();
                continue;
            }
            let here = done.join(&name);
            let meta = fs::symlink_metadata(&here)
                .with_context(|| format!("initramfs: {}", here.display()))?;
            if meta.file_type().is_symlink() {
                hops += 1;
                ensure!(
                    hops <= MAX_SYMLINKS,
                    "initramfs: too many symlinks resolving {}",
                    path.display()
                );
                let target = fs::read_link(&here)?;
                self.insert(&here, Entry::Symlink(target.clone()))?;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                todo.extend(components(&target));
            } else if meta.is_dir() {
                if todo.is_empty() {
                    return self.add_host_dir(&here);
                }
                self.insert(&here, Entry::Dir)?;
                done = here;
            } else {
                ensure!(
                    todo.is_empty(),
                    "initramfs: {} is not a directory (resolving {})",
                    here.display(),
                    path.display()
                );
                return self.add_host_file_as(&here, &here);
            }
        }
        Ok(())
    }

    /// A host directory and everything below it, symlinks as symlinks.
    fn add_host_dir(&mut self, dir: &Path) -> Result<()> {
        self.insert(dir, Entry::Dir)?;
        let mut children: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("initramfs: {}", dir.display()))?
            .collect::<io::Result<_>>()?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let path = child.path();
            let kind = child.file_type()?;
            if kind.is_symlink() {
                self.insert(&path, Entry::Symlink(fs::read_link(&path)?))?;
            } else if kind.is_dir() {
                self.add_host_dir(&path)?;
            } else if kind.is_file() {
                self.add_host_file_as(&path, &path)?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Writes the tree as a newc archive to `out` (created or truncated).
    pub fn write_to_file(&self, out: &Path) -> Result<()> {
        let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
        let mut writer = Writer::new(BufWriter::new(file));
        self.write(&mut writer)?;
        writer
            .finish()?
            .flush()
            .with_context(|| format!("write {}", out.display()))
    }

    fn write<W: Write>(&self, writer: &mut Writer<W>) -> Result<()> {
        for (path, entry) in &self.entries {
            let name = path.strip_prefix("/").expect("guest paths are absolute");
            match entry {
                Entry::Dir => writer.dir(name, 0o755)?,
                Entry::Data { data, mode } => writer.file(name, *mode, data)?,
                Entry::Symlink(target) => writer.symlink(name, target)?,
                Entry::HostFile { source, mode } => {
                    let data =
                        fs::read(source).with_context(|| format!("read {}", source.display()))?;
                    writer.file(name, *mode, &data)?;
                }
            }
        }
        Ok(())
    }
}

/// The normal components of `path`, last first (a stack to pop from).
fn components(path: &Path) -> Vec<OsString> {
    let mut parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

/// The newc writer: one header per entry, name and data each padded to four
/// bytes, and the `TRAILER!!!` entry at the end.
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_ino: 1 }
    }

    pub fn dir(&mut self, name: &Path, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, 2, &[])
    }

    pub fn file(&mut self, name: &Path, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, data)
    }

    pub fn symlink(&mut self, name: &Path, target: &Path) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, target.as_os_str().as_bytes())
    }

    /// Writes the trailer and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(Path::new(TRAILER), 0, 0, 1, 0)?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &Path, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{} is over 4 GiB", name.display())))?;
        self.header(name, ino, mode, nlink, size)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn header(
        &mut self,
        name: &Path,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
    ) -> io::Result<()> {
        let name = name.as_os_str().as_bytes();
        let namesize = u32::try_from(name.len() + 1).map_err(io::Error::other)?;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name)?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let pad = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// One parsed newc entry: name, mode, nlink, data.
    type Parsed = (String, u32, u32, Vec<u8>);

    /// Reads an archive back, checking the magic and the 4-byte alignment
    /// of every header and data block.
    fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let total = bytes.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - bytes.len()) % 4, 0, "header not aligned");
            assert_eq!(&bytes[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, nlink, size, namesize) =
                (field(1), field(4), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&bytes[110..110 + namesize - 1])
                .unwrap()
                .to_owned();
            assert_eq!(bytes[110 + namesize - 1], 0, "name not NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = bytes[data_at..data_at + size].to_vec();
            bytes = &bytes[(data_at + size).next_multiple_of(4).min(bytes.len())..];
            if name == TRAILER {
                assert!(bytes.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, nlink, data));
        }
    }

    #[test]
    fn writes_newc_headers_byte_for_byte() {
        let mut writer = Writer::new(Vec::new());
        writer
            .file(Path::new("init"), 0o755, b"#!/bin/sh\n")
            .unwrap();
        let bytes = writer.finish().unwrap();
        let expected_header = concat!(
            "070701", "00000001", "000081ed", "00000000", "00000000", "00000001", "00000000",
            "0000000a", "00000000", "00000000", "00000000", "00000000", "00000005", "00000000",
        );
        assert_eq!(&bytes[..110], expected_header.as_bytes());
        // 110 + "init\0" = 115, padded to 116; then 10 bytes of data padded to 12.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..128], b"#!/bin/sh\n\0\0");
        assert_eq!(&bytes[128..134], b"070701");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn a_tree_is_written_parents_first_with_symlinks_and_data() {
        let mut tree = Tree::new();
        tree.add_data("/usr/bin/tool", b"tool".to_vec(), 0o755)
            .unwrap();
        tree.insert("/bin", Entry::Symlink("usr/bin".into()))
            .unwrap();
        tree.add_data("/init", b"#!/bin/busybox sh\n".to_vec(), 0o755)
            .unwrap();
        // The same entry again is fine; another one at that path is not.
        tree.insert("/bin", Entry::Symlink("usr/bin".into()))
            .unwrap();
        assert!(tree.insert("/bin", Entry::Dir).is_err());
        assert!(tree.add_data("/init/x", b"".to_vec(), 0o644).is_err());
        assert!(tree.add_data("relative", b"".to_vec(), 0o644).is_err());

        let mut writer = Writer::new(Vec::new());
        tree.write(&mut writer).unwrap();
        let entries = parse(&writer.finish().unwrap());
        let view: Vec<(&str, u32, &[u8])> = entries
            .iter()
            .map(|(n, m, _, d)| (n.as_str(), *m, d.as_slice()))
            .collect();
        assert_eq!(
            view,
            [
                ("bin", S_IFLNK | 0o777, b"usr/bin".as_slice()),
                ("init", S_IFREG | 0o755, b"#!/bin/busybox sh\n"),
                ("usr", S_IFDIR | 0o755, b""),
                ("usr/bin", S_IFDIR | 0o755, b""),
                ("usr/bin/tool", S_IFREG | 0o755, b"tool"),
            ]
        );
    }

    #[test]
    fn host_paths_bring_their_symlinks_along() {
        let root =
            std::env::temp_dir().join(format!("xtask-initramfs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/lib/arch")).unwrap();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        fs::write(root.join("usr/lib/arch/libx.so.1.2"), b"ELF").unwrap();
        symlink("libx.so.1.2", root.join("usr/lib/arch/libx.so.1")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("../lib/arch/libx.so.1", root.join("usr/lib64/ld.so")).unwrap();

        let mut tree = Tree::new();
        tree.add_host_path(&root.join("lib/arch/libx.so.1"))
            .unwrap();
        tree.add_host_path(&root.join("usr/lib64/ld.so")).unwrap();
        let _ = fs::remove_dir_all(&root);

        let at = |p: &str| tree.get(&root.join(p)).cloned();
        assert_eq!(at("lib"), Some(Entry::Symlink("usr/lib".into())));
        assert_eq!(
            at("usr/lib/arch/libx.so.1"),
            Some(Entry::Symlink("libx.so.1.2".into()))
        );
        assert!(matches!(
            at("usr/lib/arch/libx.so.1.2"),
            Some(Entry::HostFile { .. })
        ));
        assert_eq!(
            at("usr/lib64/ld.so"),
            Some(Entry::Symlink("../lib/arch/libx.so.1".into()))
        );
        assert_eq!(at("usr/lib/arch"), Some(Entry::Dir));
    }
}
