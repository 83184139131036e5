//! Files the sink creates, made without ever following a symbolic link: a directory is
//! opened once (`Dir`) and every temporary file in it is created new through that handle
//! (`openat` with `O_CREAT|O_EXCL|O_NOFOLLOW`), then synced, renamed and removed through
//! it (`renameat`, `unlinkat`); files read back are opened with `O_NOFOLLOW`. So a link
//! planted where the sink writes (another user's doing, in a shared directory) is an
//! error naming it, never a way to write outside the directory. Named files the user
//! chose (`--results`, `--timeline`) are opened with `O_NOFOLLOW` too ([`create_file`]).
//! No layout of what is written here; no sockets.

use anyhow::{anyhow, bail, Context};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Mode of the files created here (before the umask), as `File::create` gives.
const FILE_MODE: libc::c_uint = 0o666;

/// A directory, opened once, in which files are created, renamed, removed and read by
/// name: every name is one path component, resolved in this directory, never through a
/// link.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// `name` as a C string, if it is one plain component of a path.
fn component(name: &str) -> anyhow::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        bail!("{name:?} is not a file name");
    }
    CString::new(name).map_err(|_| anyhow!("{name:?} is not a file name"))
}

fn path_text(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{} holds a NUL byte", path.display()))
}

/// What a name in a directory is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    File,
    Link,
    Other,
}

impl Dir {
    /// Opens the directory at `path` (a link to a directory is followed here, once: the
    /// user named it).
    pub fn open(path: &Path) -> anyhow::Result<Dir> {
        let text = path_text(path)?;
        // SAFETY: `text` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe {
            libc::open(
                text.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot open the directory {}", path.display()));
        }
        Ok(Dir {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_owned(),
        })
    }

    /// The path of `name` in this directory, for messages.
    pub fn show(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    fn kind(&self, name: &CString) -> std::io::Result<Kind> {
        // SAFETY: an all-zero `stat` is a valid value for fstatat to overwrite.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open, `name` is NUL-terminated, `stat` is ours to write.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::NotFound => Ok(Kind::Missing),
                _ => Err(e),
            };
        }
        Ok(match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Link,
            _ => Kind::Other,
        })
    }

    fn create_new(&self, name: &CString) -> std::io::Result<File> {
        // SAFETY: the fd is open and `name` is NUL-terminated; the mode is a plain integer.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                FILE_MODE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Creates `name` new, for writing. A regular file already there (a temporary file
    /// left by a crash) is removed first; a link, or anything else, is an error naming it.
    pub fn create_temporary(&self, name: &str) -> anyhow::Result<File> {
        let c = component(name)?;
        let shown = self.show(name);
        for _ in 0..2 {
            match self.create_new(&c) {
                Ok(file) => return Ok(file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {shown}")),
            }
            match self
                .kind(&c)
                .with_context(|| format!("cannot inspect {shown}"))?
            {
                Kind::Link => bail!(
                    "{shown} is a symbolic link where the sink writes a temporary file; remove it \
                     (the sink never writes through a link, and someone who may write in {} can \
                     plant one)",
                    self.path.display()
                ),
                Kind::Other => bail!(
                    "{shown} is not a regular file, and the sink writes a temporary file there; \
                     remove it"
                ),
                // A stale temporary file (a crash): replaced. Gone meanwhile: try again.
                Kind::File => self.remove(name)?,
                Kind::Missing => {}
            }
        }
        bail!("cannot create {shown}: something keeps recreating it")
    }

    /// Renames `from` to `to`, both in this directory. A link at `to` is replaced, not
    /// followed.
    pub fn rename(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: the fd is open and both names are NUL-terminated.
        if unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("cannot rename {} to {}", self.show(from), self.show(to))
            });
        }
        Ok(())
    }

    /// Removes the file `name` (a link is removed, not followed); one already gone is fine.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let c = component(name)?;
        // SAFETY: the fd is open and `name` is NUL-terminated.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| format!("cannot remove {}", self.show(name)));
            }
        }
        Ok(())
    }

    /// Reads the file `name`, an output: a link, anything but a regular file (a FIFO would
    /// block the sink), or a file longer than an output may be (`--max-payload`) is an
    /// error naming it.
    pub fn read(&self, name: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
        use std::io::Read;
        let c = component(name)?;
        // SAFETY: the fd is open and `name` is NUL-terminated.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                bail!(
                    "{} is a symbolic link; the sink reads back only the files it wrote",
                    self.show(name)
                );
            }
            return Err(e).with_context(|| format!("cannot read {}", self.show(name)));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {}", self.show(name)))?;
        if !meta.file_type().is_file() {
            bail!(
                "{} is not a regular file; the sink reads back only the files it wrote",
                self.show(name)
            );
        }
        if meta.len() > limit {
            bail!(
                "{} holds {} bytes, more than an output may ({limit}); the sink reads back only \
                 the files it wrote",
                self.show(name),
                meta.len()
            );
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(limit)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", self.show(name)))?;
        Ok(bytes)
    }

    /// Makes the renames in this directory durable.
    pub fn sync(&self) -> anyhow::Result<()> {
        // SAFETY: the fd is open.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot sync the directory {}", self.path.display()));
        }
        Ok(())
    }
}

/// Writes a file whole under `name` in `dir`: to the hidden temporary `.NAME.tmp` (made
/// new), with `write`, synced, then renamed over `name`.
pub fn write_whole(
    dir: &Dir,
    name: &str,
    write: impl FnOnce(&mut File) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let temporary = format!(".{name}.tmp");
    let mut file = dir.create_temporary(&temporary)?;
    let written = write(&mut file)
        .and_then(|()| {
            file.sync_all()
                .with_context(|| format!("cannot write {}", dir.show(&temporary)))
        })
        .and_then(|()| dir.rename(&temporary, name));
    if written.is_err() {
        let _ = dir.remove(&temporary);
    }
    written
}

/// Opens `path` to write it from the start, creating it if missing, without following a
/// link there (an error naming it). `append` keeps what it holds. `what` names the file in
/// errors (`results file`).
/// The file made and removed to see that a folder can be written in.
pub const PROBE: &str = ".conquer-probe";

/// Checks, before a batch runs, that a file written after it (`flag`'s) can be: `path` is
/// no directory, and its folder is made (as --outputs makes its own) and can be written
/// in (a file is made there and removed).
pub fn check_writable(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "{flag} {}: that is a directory: name a file in it",
            path.display()
        );
    }
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).with_context(|| {
        format!(
            "{flag} {}: cannot create its folder {}",
            path.display(),
            folder.display()
        )
    })?;
    let handle = Dir::open(folder).with_context(|| format!("{flag} {}", path.display()))?;
    handle
        .create_temporary(PROBE)
        .and_then(|_| handle.remove(PROBE))
        .with_context(|| {
            format!(
                "{flag} {}: cannot write in its folder {}",
                path.display(),
                folder.display()
            )
        })
}

pub fn create_file(path: &Path, what: &str, append: bool) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!append)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    match opened {
        Ok(file) => Ok(file),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{what} {} is a symbolic link; give the path of the file itself (the sink does not \
             write through links)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot create {what} {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_file_is_made_new_and_a_link_there_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let d = Dir::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".a.tmp")).unwrap();
        let e = d.create_temporary(".a.tmp").unwrap_err().to_string();
        assert!(e.contains(".a.tmp") && e.contains("symbolic link"), "{e}");
        let e = write_whole(&d, "a", |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains(".a.tmp"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A dangling link is refused as well: it would create its target.
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join(".b.tmp")).unwrap();
        assert!(d.create_temporary(".b.tmp").is_err());
        assert!(!dir.path().join("nowhere").exists());
        for bad in ["", ".", "..", "a/b"] {
            assert!(d.create_temporary(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stale_temporary_file_is_replaced_and_a_link_at_the_name_is_not_followed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(".x.tmp"), b"stale, from a crash").unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("x")).unwrap();
        write_whole(&d, "x", |f| Ok(f.write_all(b"new")?)).unwrap();
        d.sync().unwrap();
        assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), b"new");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(!dir.path().join(".x.tmp").exists());
        assert_eq!(d.read("x", 1 << 20).unwrap(), b"new");
        std::os::unix::fs::symlink(&target, dir.path().join("y")).unwrap();
        let e = d.read("y", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_named_file_is_not_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("results.csv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_file(&link, "results file", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("results.csv") && e.contains("symbolic link"),
            "{e}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"old").unwrap();
        drop(create_file(&plain, "results file", false).unwrap());
        assert_eq!(std::fs::read(&plain).unwrap(), b"");
    }
}
