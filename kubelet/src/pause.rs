//! `tinykube pause`: PID 1 of every pod sandbox. It holds the pod's namespaces, reaps
//! zombies and exits on SIGINT or SIGTERM, like Kubernetes' pause container.

/// Never returns: waits for signals until told to stop.
pub fn run() -> ! {
    // SAFETY: plain signal-mask manipulation and sigwait on this single-threaded path;
    // the set lives on our stack for every call that uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            match sig {
                libc::SIGCHLD => {
                    while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                }
                _ => libc::_exit(0),
            }
        }
    }
}
