//! Named network namespaces, pinned under /var/run/netns the way `ip netns add` pins
//! them, so containerd (in another mount namespace) and `ip netns exec` see them too.
//!
//! A namespace is made by a short-lived thread that calls `unshare(CLONE_NEWNET)` and
//! bind-mounts its own `/proc/thread-self/ns/net` onto the pin file; code runs inside
//! one through a thread that `setns`es into it, so no other thread ever changes
//! namespace.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid network namespace name {0:?}")]
    Name(String),
    #[error("network namespace {0} already exists")]
    Exists(String),
    #[error("network namespace {0} does not exist")]
    Missing(String),
    #[error("failed to {what} for network namespace {name}")]
    Sys {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A pinned network namespace.
#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL")
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes /var/run/netns a shared mount point, as iproute2 does, so pins made later
/// propagate into mount namespaces created from this one.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let d = cstr(dir);
    // SAFETY: plain mount(2) calls with valid NUL-terminated paths and null data.
    unsafe {
        if libc::mount(
            d.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        ) == 0
        {
            return Ok(());
        }
        // Not a mount point yet: bind it onto itself, then make it shared.
        check(libc::mount(
            d.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            d.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        ))
    }
}

impl NetNs {
    fn valid(name: &str) -> Result<(), NetnsError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name != "."
            && name != ".."
            && !name.contains('/');
        if ok {
            Ok(())
        } else {
            Err(NetnsError::Name(name.into()))
        }
    }

    /// Creates and pins a new, empty network namespace (only `lo`, down).
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        Self::valid(name)?;
        let sys = |what| {
            move |source| NetnsError::Sys {
                what,
                name: name.to_string(),
                source,
            }
        };
        let dir = Path::new(NETNS_DIR);
        // Once per process: remounting takes the kernel's mount lock, which pods
        // starting together would queue on.
        static PREPARED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        if PREPARED.get().is_none() {
            prepare_dir(dir).map_err(sys("prepare /var/run/netns"))?;
            let _ = PREPARED.set(());
        }
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Exists(name.into()));
            }
            Err(e) => return Err(sys("create the pin file")(e)),
        }
        let target = cstr(&path);
        let made = std::thread::spawn(move || -> io::Result<()> {
            let source = CString::new("/proc/thread-self/ns/net").expect("static path");
            // SAFETY: unshare affects only this short-lived thread; mount gets valid paths.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNET))?;
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            }
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(sys("unshare and pin")(e));
        }
        Ok(Self {
            name: name.into(),
            path,
        })
    }

    /// An existing pinned namespace.
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        Self::valid(name)?;
        let path = Path::new(NETNS_DIR).join(name);
        if !path.exists() {
            return Err(NetnsError::Missing(name.into()));
        }
        Ok(Self {
            name: name.into(),
            path,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let file = File::open(&self.path).map_err(|source| NetnsError::Sys {
            what: "open",
            name: self.name.clone(),
            source,
        })?;
        let name = self.name.clone();
        std::thread::spawn(move || -> Result<T, NetnsError> {
            // SAFETY: setns on this thread only, with an fd we own for the call's duration.
            check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }).map_err(
                |source| NetnsError::Sys {
                    what: "enter",
                    name,
                    source,
                },
            )?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Sys {
                what: "run",
                name: self.name.clone(),
                source: io::Error::other("thread panicked"),
            })
        })
    }

    /// Unpins and removes the namespace (it goes once nothing else holds it).
    pub fn delete(self) -> Result<(), NetnsError> {
        let p = cstr(&self.path);
        // SAFETY: umount2 with a valid path; a detach is what `ip netns del` does.
        let _ = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        std::fs::remove_file(&self.path).map_err(|source| NetnsError::Sys {
            what: "remove the pin file",
            name: self.name,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn names_are_checked() {
        assert!(NetNs::valid("pod-1").is_ok());
        assert!(NetNs::valid("../x").is_err());
        assert!(NetNs::valid("").is_err());
    }

    /// Needs root (CI runs as root): creates, enters and removes a real namespace.
    #[test]
    fn namespaces_are_created_entered_and_removed() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test needs root; CI runs as root");
        let name = format!("nstest-{}", std::process::id());
        struct Cleanup(String);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                if let Ok(ns) = NetNs::open(&self.0) {
                    let _ = ns.delete();
                }
            }
        }
        let _guard = Cleanup(name.clone());
        let ns = NetNs::create(&name).unwrap();
        assert!(matches!(NetNs::create(&name), Err(NetnsError::Exists(_))));
        let pinned = std::fs::metadata(ns.path()).unwrap().ino();
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(pinned, ours, "a new namespace, not ours");
        let (inside, devices) = ns
            .run(|| {
                let ino = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
                let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
                let names: Vec<String> = dev
                    .lines()
                    .skip(2)
                    .filter_map(|l| Some(l.split(':').next()?.trim().to_string()))
                    .collect();
                (ino, names)
            })
            .unwrap();
        assert_eq!(inside, pinned, "run() executes inside the namespace");
        assert_eq!(devices, ["lo"], "a new namespace has only loopback");
        ns.delete().unwrap();
        assert!(matches!(NetNs::open(&name), Err(NetnsError::Missing(_))));
    }
}
