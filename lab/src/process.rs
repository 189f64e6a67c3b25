//! The lab's processes: node agents and containerd started detached inside a node's
//! network namespace, and stopped by pid only after checking the pid is still theirs.

use super::*;

/// Starts `program` detached (own session) inside network namespace `ns`, entering it
/// with setns only, so the process keeps the host's mount namespace (containerd must
/// see the pod namespaces it pins).
pub(crate) fn spawn_in(
    ns: Option<&NetNs>,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<u32, LabError> {
    let out = std::fs::File::create(log).map_err(io(format!("cannot create {}", log.display())))?;
    let err = out.try_clone().map_err(io("cannot duplicate a log file"))?;
    let nsfile = match ns {
        Some(ns) => Some(
            std::fs::File::open(ns.path())
                .map_err(io(format!("cannot open {}", ns.path().display())))?,
        ),
        None => None,
    };
    let fd = nsfile.as_ref().map(|f| f.as_raw_fd());
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: between fork and exec only async-signal-safe calls (setns, setsid) run.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io(format!("cannot start {}", program.display())))?;
    Ok(child.id())
}

/// Starts a containerd of the lab's own, detached, in the host's namespaces.
pub(crate) fn spawn_containerd(config: &Path, log: &Path) -> Result<u32, LabError> {
    spawn_in(
        None,
        Path::new("containerd"),
        &["--config".into(), config.display().to_string()],
        &[],
        log,
    )
}

/// True while `pid` runs (a zombie counts as gone; our own children are reaped).
pub(crate) fn alive(pid: u32) -> bool {
    // SAFETY: waitpid with WNOHANG on a pid; fails harmlessly if it is not our child.
    unsafe {
        libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub(crate) fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Stops process `pid` if its command line still contains `marker` (so a reused pid
/// is never signalled): SIGTERM, up to `grace`, then SIGKILL.
pub(crate) async fn stop_process(pid: u32, marker: &str, grace: Duration) {
    if !alive(pid) {
        return;
    }
    let command = cmdline(pid);
    if command.is_empty() {
        // Already exiting (its memory, and so its command line, is gone): wait for it
        // to go, so nothing of it is left when this returns.
        wait_gone(pid, grace).await;
        return;
    }
    if !command.contains(marker) {
        return;
    }
    // SAFETY: kill(2) on a pid we started, checked above by its command line.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    wait_gone(pid, grace).await;
    if alive(pid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `pid` is gone, at most `limit`.
async fn wait_gone(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn containerd_answers(socket: &Path) -> bool {
    socket.exists()
        && Runtime::connect(socket, "default", Duration::from_millis(500))
            .await
            .is_ok()
}

/// Pids whose command line contains `needle`.
pub(crate) fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != me && cmdline(*p).contains(needle))
        .collect()
}
