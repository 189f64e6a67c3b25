//! `tinykube toolbox`: the course exercises' programs, shipped in the node-made
//! `tinykube.local/toolbox` image. `serve` answers HTTP (and UDP) on 8080 with who
//! answered (pod, namespace, node, IP) and who asked; `fetch` requests a URL repeatedly
//! and prints each answer, the client side of the load-balancing exercise; `udp` does
//! the same over UDP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

/// Who this pod is: the downward API variables when the pod sets them (POD_NAME,
/// POD_NAMESPACE, NODE_NAME, POD_IP), otherwise what the kubelet's files say
/// (/etc/hostname, the namespace in /etc/resolv.conf's search path, /etc/hosts).
pub fn identity() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let name = env("POD_NAME").unwrap_or_else(|| hostname.clone());
    let namespace = env("POD_NAMESPACE").unwrap_or_else(|| {
        std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("search "))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|d| d.split('.').next())
                    .map(String::from)
            })
            .unwrap_or_else(|| "unknown".into())
    });
    let ip = env("POD_IP").unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hosts")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let mut f = l.split_whitespace();
                    let ip = f.next()?;
                    f.any(|h| h == hostname).then(|| ip.to_string())
                })
            })
            .unwrap_or_else(|| "unknown".into())
    });
    let node = env("NODE_NAME").unwrap_or_else(|| "unknown".into());
    format!("pod={name} namespace={namespace} node={node} ip={ip}")
}

fn answer(mut s: TcpStream, me: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let client = s
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let body = if path == "/healthz" {
        "ok\n".to_string()
    } else {
        // The caller's address as this pod sees it: across nodes, the other pod's own
        // IP (no NAT inside the pod network).
        format!("{me} client={client}\n")
    };
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Serves forever on `port`. As PID 1 of its container it would ignore SIGTERM by
/// default, so it exits on it (a pod deletion then takes no grace period).
pub fn serve(port: u16) -> std::io::Result<()> {
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        libc::signal(libc::SIGTERM, exit_now as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, exit_now as *const () as libc::sighandler_t);
    }
    let me = identity();
    let l = TcpListener::bind(("0.0.0.0", port))?;
    let u = UdpSocket::bind(("0.0.0.0", port))?;
    eprintln!("serving on :{port} as {me}");
    let who = me.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(format!("{who} client={}\n", from.ip()).as_bytes(), from);
        }
    });
    for s in l.incoming().flatten() {
        let me = me.clone();
        std::thread::spawn(move || answer(s, &me));
    }
    Ok(())
}

/// One GET of `url` (http only); returns the body.
fn get(url: &str, timeout: Duration) -> std::io::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("only http:// URLs are supported: {url}")))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr_str = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = addr_str
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {hostport}")))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(resp))
}

/// Requests `url` `count` times (0: forever), printing each answer on a line.
pub fn fetch(url: &str, count: u64, interval: Duration) -> std::io::Result<()> {
    let mut i = 0;
    loop {
        match get(url, Duration::from_secs(5)) {
            Ok(body) => print!(
                "{}",
                if body.ends_with('\n') {
                    body
                } else {
                    format!("{body}\n")
                }
            ),
            Err(e) => println!("error: {e}"),
        }
        let _ = std::io::stdout().flush();
        i += 1;
        if count != 0 && i >= count {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Sends a datagram to `addr` `count` times and prints each answer (or a timeout).
pub fn udp(addr: &str, count: u64, interval: Duration) -> std::io::Result<()> {
    let to = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    for i in 0..count.max(1) {
        if i > 0 {
            std::thread::sleep(interval);
        }
        s.send_to(b"hello", to)?;
        match s.recv_from(&mut buf) {
            Ok((n, _)) => print!("{}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => println!("error: {e}"),
        }
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// Allocates and touches `mib` MiB, then sleeps: a memory hog for limit exercises.
pub fn alloc(mib: usize) -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        blocks.push(vec![1u8; 1 << 20]);
    }
    println!("allocated {mib} MiB");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&blocks);
    }
}

#[derive(Subcommand)]
pub enum ToolboxCommand {
    /// Answer HTTP and UDP on PORT with this pod's name, namespace, node and IP, and the caller's.
    Serve {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Request URL repeatedly and print each answer.
    Fetch {
        url: String,
        /// How many requests (0: until stopped).
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Send a datagram to HOST:PORT and print the answer, COUNT times.
    Udp {
        addr: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Print the environment, one VAR=value per line.
    Env,
    /// Print files.
    Cat { files: Vec<PathBuf> },
    /// Write TEXT (and a newline) to FILE.
    Write { file: PathBuf, text: String },
    /// Sleep (as PID 1 this ignores SIGTERM, like `sleep` in a container).
    Sleep { seconds: u64 },
    /// Exit with CODE.
    Exit { code: u8 },
    /// Allocate and touch MiB of memory, then sleep.
    Alloc { mib: usize },
}

/// Runs one toolbox program.
pub fn run(command: ToolboxCommand) -> std::io::Result<ExitCode> {
    match command {
        ToolboxCommand::Serve { port } => serve(port)?,
        ToolboxCommand::Fetch {
            url,
            count,
            interval_ms,
        } => fetch(&url, count, Duration::from_millis(interval_ms))?,
        ToolboxCommand::Udp {
            addr,
            count,
            interval_ms,
        } => udp(&addr, count, Duration::from_millis(interval_ms))?,
        ToolboxCommand::Env => {
            for (k, v) in std::env::vars() {
                println!("{k}={v}");
            }
        }
        ToolboxCommand::Cat { files } => {
            for f in files {
                print!("{}", std::fs::read_to_string(&f)?);
            }
        }
        ToolboxCommand::Write { file, text } => std::fs::write(file, format!("{text}\n"))?,
        ToolboxCommand::Sleep { seconds } => std::thread::sleep(Duration::from_secs(seconds)),
        ToolboxCommand::Exit { code } => return Ok(ExitCode::from(code)),
        ToolboxCommand::Alloc { mib } => alloc(mib),
    }
    Ok(ExitCode::SUCCESS)
}
