//! Listener sockets: one SO_REUSEPORT socket per worker for each address.

use std::net::SocketAddr;

/// Binds one SO_REUSEPORT socket per worker for `addr`. A port of 0 is resolved by the first
/// bind and reused by the others, as Envoy does.
pub fn bind_reuseport(addr: SocketAddr, n: usize, backlog: i32) -> std::io::Result<Vec<std::net::TcpListener>> {
    bind_reuseport_with(addr, n, backlog, false)
}

/// Like [`bind_reuseport`]; `v6_only` keeps an IPv6 wildcard socket from taking IPv4 too.
pub fn bind_reuseport_with(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
    v6_only: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            let _ = s.set_only_v6(v6_only);
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog)?;
        if addr.port() == 0
            && let Some(a) = s.local_addr()?.as_socket()
        {
            addr = a;
        }
        out.push(s.into());
    }
    Ok(out)
}
