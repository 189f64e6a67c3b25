//! `tinykube toolbox`: the course exercises' programs, shipped in the node-made
//! `tinykube.local/toolbox` image. `serve` answers HTTP (and UDP) on 8080 with who
//! answered (pod, namespace, node, IP) and who asked; `fetch` requests a URL repeatedly
//! and prints each answer, the client side of the load-balancing exercise; `udp` does
//! the same over UDP; `dig` asks the cluster DNS one question.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use hickory_proto::rr::RecordType;

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

/// HOST:PORT with HOST an address or a name, resolved as the pod's resolver would
/// (/etc/hosts, then cluster DNS through the search list): the binary is static, and
/// glibc's resolver needs shared libraries no image here carries.
fn socket_addr(hostport: &str) -> std::io::Result<SocketAddr> {
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| std::io::Error::other(format!("{hostport}: expected HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| std::io::Error::other(format!("{hostport}: bad port")))?;
    let ip = tinykube_dns::stub::resolve(host.trim_start_matches('[').trim_end_matches(']'))?[0];
    Ok(SocketAddr::new(ip, port))
}

/// Asks the cluster DNS (or `server`) one question and prints the answer as dig does.
pub fn dig(
    name: &str,
    qtype: &str,
    server: Option<IpAddr>,
    tcp: bool,
    short: bool,
    search: bool,
) -> std::io::Result<ExitCode> {
    use tinykube_dns::stub;
    let qtype: RecordType = qtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| std::io::Error::other(format!("unknown record type {qtype}")))?;
    let conf = stub::system();
    let server = server
        .or_else(|| conf.nameserver_ips().first().copied())
        .ok_or_else(|| std::io::Error::other("no nameserver in /etc/resolv.conf; pass --server"))?;
    let names = if search {
        stub::candidates(&conf, name)
    } else {
        vec![if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        }]
    };
    let mut last = None;
    for n in &names {
        let m = stub::query(
            SocketAddr::new(server, 53),
            n,
            qtype,
            tcp,
            Duration::from_secs(3),
        )?;
        let done = m.response_code() != hickory_proto::op::ResponseCode::NXDomain;
        last = Some(m);
        if done {
            break;
        }
    }
    let m = last.expect("at least one name");
    if short {
        for r in m.answers() {
            println!("{}", r.data());
        }
    } else {
        let h = m.header();
        let mut flags = vec!["qr"];
        for (on, f) in [
            (h.authoritative(), "aa"),
            (h.truncated(), "tc"),
            (h.recursion_desired(), "rd"),
            (h.recursion_available(), "ra"),
        ] {
            if on {
                flags.push(f);
            }
        }
        println!(
            ";; ->>HEADER<<- opcode: QUERY, status: {}, id: {}",
            rcode_name(m.response_code()),
            m.id()
        );
        println!(
            ";; flags: {}; QUERY: {}, ANSWER: {}, AUTHORITY: {}, ADDITIONAL: {}",
            flags.join(" "),
            m.queries().len(),
            m.answers().len(),
            m.name_servers().len(),
            m.additionals().len()
        );
        for (title, records) in [
            ("ANSWER", m.answers()),
            ("AUTHORITY", m.name_servers()),
            ("ADDITIONAL", m.additionals()),
        ] {
            if !records.is_empty() {
                println!("\n;; {title} SECTION:");
                for r in records {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        r.name(),
                        r.ttl(),
                        r.dns_class(),
                        r.record_type(),
                        r.data()
                    );
                }
            }
        }
        println!(
            "\n;; SERVER: {server}#53({})",
            if tcp { "TCP" } else { "UDP" }
        );
    }
    Ok(
        if m.response_code() == hickory_proto::op::ResponseCode::NoError {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// An rcode as dig names it.
fn rcode_name(r: hickory_proto::op::ResponseCode) -> String {
    use hickory_proto::op::ResponseCode as R;
    match r {
        R::NoError => "NOERROR".into(),
        R::FormErr => "FORMERR".into(),
        R::ServFail => "SERVFAIL".into(),
        R::NXDomain => "NXDOMAIN".into(),
        R::NotImp => "NOTIMP".into(),
        R::Refused => "REFUSED".into(),
        other => u16::from(other).to_string(),
    }
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
    let addr = socket_addr(&addr_str)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    // One write: a server that answers after the first segment never resets us.
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes(),
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
    let to = socket_addr(addr)?;
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
    /// Look NAME up in DNS (the pod's nameserver, or --server) and print the answer as
    /// dig does; exits 1 unless NOERROR.
    Dig {
        name: String,
        /// A, AAAA, SRV, PTR, TXT, CNAME, SOA, ...
        #[arg(default_value = "A")]
        qtype: String,
        #[arg(long)]
        server: Option<IpAddr>,
        /// Ask over TCP.
        #[arg(long)]
        tcp: bool,
        /// Print only the answers' data.
        #[arg(long)]
        short: bool,
        /// Try the search list of /etc/resolv.conf, as nslookup does.
        #[arg(long)]
        search: bool,
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
    /// Ask the API server from inside the pod, as its service account (kube-rs's
    /// in-cluster config: the mounted token and CA, KUBERNETES_SERVICE_HOST): `api get
    /// pods [-n NS]` prints the names, or the server's refusal and exits 1.
    Api {
        /// Only `get` (a list).
        verb: String,
        /// A core resource: pods, services, secrets, configmaps, ...
        resource: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// How many times (0: until stopped), one line `ok N` or the error each time
        /// after the first.
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

/// `api get RESOURCE`: lists through kube-rs with the in-cluster config.
fn api(
    verb: &str,
    resource: &str,
    namespace: Option<String>,
    count: u64,
    interval: Duration,
) -> std::io::Result<ExitCode> {
    if verb != "get" {
        println!("error: only `api get RESOURCE` is supported");
        return Ok(ExitCode::from(2));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut code = ExitCode::SUCCESS;
        let mut i = 0;
        while count == 0 || i < count {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            // The config is read afresh each time: the mounted token is renewed by the
            // kubelet, and a long-lived client reloads it the same way (kube-rs and
            // client-go re-read the file every minute).
            let config = match kube::Config::incluster() {
                Ok(c) => c,
                Err(e) => {
                    println!("error: not in a pod with a service account: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            let ns = namespace
                .clone()
                .unwrap_or_else(|| config.default_namespace.clone());
            let client = match kube::Client::try_from(config) {
                Ok(c) => c,
                Err(e) => {
                    println!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            let path = format!("/api/v1/namespaces/{ns}/{resource}");
            let req = http::Request::get(&path)
                .body(Vec::new())
                .expect("a request");
            match client.request::<serde_json::Value>(req).await {
                Ok(list) => {
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    if i == 0 {
                        for item in &items {
                            let name = item["metadata"]["name"].as_str().unwrap_or_default();
                            println!("{}/{name}", resource.trim_end_matches('s'));
                        }
                    } else {
                        println!("ok {}", items.len());
                    }
                    code = ExitCode::SUCCESS;
                }
                Err(kube::Error::Api(s)) => {
                    println!("Error from server ({}): {}", s.reason, s.message);
                    code = ExitCode::from(1);
                }
                Err(e) => {
                    println!("error: {e}");
                    code = ExitCode::from(1);
                }
            }
            i += 1;
        }
        Ok(code)
    })
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
        ToolboxCommand::Dig {
            name,
            qtype,
            server,
            tcp,
            short,
            search,
        } => return dig(&name, &qtype, server, tcp, short, search),
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
        ToolboxCommand::Api {
            verb,
            resource,
            namespace,
            count,
            interval_ms,
        } => {
            return api(
                &verb,
                &resource,
                namespace,
                count,
                Duration::from_millis(interval_ms),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
