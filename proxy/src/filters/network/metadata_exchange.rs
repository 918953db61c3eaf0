//! Istio's TCP metadata exchange (`istio.metadata_exchange`,
//! `envoy.tcp.metadataexchange.config.MetadataExchange`): when the TLS handshake negotiated the
//! filter's ALPN (`istio-peer-exchange`), each side first writes a header — magic `0x3D230467`,
//! a big-endian length, then a `google.protobuf.Any` of a `Struct` with the node's metadata
//! (`x-envoy-peer-metadata`) and id (`x-envoy-peer-metadata-id`) — and reads the peer's before
//! any payload. The header never reaches the app. A peer whose first bytes are not the magic is
//! passed through untouched, as Istio does ("peer missing TCP MetadataExchange filter").
//!
//! Listeners run it on the downstream connection (see `listener.rs`); clusters with the filter in
//! `filters` run it on upstream connections of `tcp_proxy`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Any, Struct, Value, value};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::{BuildCtx, ConfigError, NodeInfo};

pub const TYPE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";
pub const MAGIC: u32 = 0x3D23_0467;
const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
const METADATA_KEY: &str = "x-envoy-peer-metadata";
const ID_KEY: &str = "x-envoy-peer-metadata-id";
/// The peer's header is refused past this size (Istio's headers are a few hundred bytes).
const MAX_HEADER: usize = 64 * 1024;
/// How long a peer that negotiated the exchange may take to send its header.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// The node metadata keys exchanged when the node has no `EXCHANGE_KEYS` (pilot-agent's list).
const DEFAULT_KEYS: &[&str] = &[
    "NAME",
    "NAMESPACE",
    "INSTANCE_IPS",
    "LABELS",
    "OWNER",
    "PLATFORM_METADATA",
    "WORKLOAD_NAME",
    "MESH_ID",
    "SERVICE_ACCOUNT",
    "CLUSTER_ID",
];

/// The filter's config (Istio's proto, not in envoy-types).
#[derive(Clone, PartialEq, prost::Message)]
struct MetadataExchangeProto {
    #[prost(string, tag = "1")]
    protocol: String,
}

pub use crate::stream_info::PeerMetadata;

/// The compiled filter: the ALPN that enables it and this node's header, encoded once.
#[derive(Debug)]
pub struct MetadataExchange {
    pub protocol: String,
    header: Vec<u8>,
}

impl MetadataExchange {
    /// From the filter's typed config (direct, or inside a `TypedStruct`).
    pub fn from_any(any: &Any, cx: &BuildCtx) -> Result<Arc<Self>, ConfigError> {
        let protocol = if xds_client::any::type_name(&any.type_url) == TYPE {
            MetadataExchangeProto::decode(any.value.as_slice())
                .map_err(|e| ConfigError::new("typed_config", format!("invalid MetadataExchange: {e}")))?
                .protocol
        } else {
            // udpa/xds TypedStruct: `value` is a Struct with the fields by their JSON names.
            let ts = xds_client::any::TypedStruct::decode(any.value.as_slice())
                .map_err(|e| ConfigError::new("typed_config", format!("invalid TypedStruct: {e}")))?;
            match ts.value.and_then(|v| v.fields.get("protocol").cloned()).and_then(|v| v.kind) {
                Some(value::Kind::StringValue(s)) => s,
                _ => String::new(),
            }
        };
        if protocol.is_empty() {
            return Err(ConfigError::new("typed_config.protocol", "value length must be at least 1 characters"));
        }
        Ok(Arc::new(MetadataExchange { protocol, header: own_header(&cx.node) }))
    }

    /// Whether the connection negotiated this filter's ALPN.
    pub fn negotiated(&self, alpn: Option<&[u8]>) -> bool {
        alpn == Some(self.protocol.as_bytes())
    }

    /// Writes this node's header and reads the peer's. Returns the peer's metadata (None when
    /// the peer sent none) and the bytes read past it, which belong to the payload.
    pub async fn exchange<IO>(&self, io: &mut IO) -> io::Result<(Option<PeerMetadata>, Vec<u8>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        io.write_all(&self.header).await?;
        io.flush().await?;
        let mut buf = Vec::with_capacity(512);
        let read = async {
            // The fixed part: magic and length.
            while buf.len() < 8 {
                if read_some(io, &mut buf).await? == 0 {
                    return Ok((None, buf));
                }
                if buf.len() >= 4 && u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) != MAGIC {
                    return Ok((None, buf));
                }
            }
            if u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) != MAGIC {
                return Ok((None, buf));
            }
            let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if len > MAX_HEADER {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("peer metadata of {len} bytes")));
            }
            while buf.len() < 8 + len {
                if read_some(io, &mut buf).await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer metadata cut short"));
                }
            }
            let peer = parse_payload(&buf[8..8 + len])?;
            Ok((Some(peer), buf.split_off(8 + len)))
        };
        match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no peer metadata")),
        }
    }
}

async fn read_some<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 1024];
    let n = io.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn parse_payload(b: &[u8]) -> io::Result<PeerMetadata> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let any = Any::decode(b).map_err(|e| bad(format!("peer metadata: {e}")))?;
    let s = Struct::decode(any.value.as_slice()).map_err(|e| bad(format!("peer metadata Struct: {e}")))?;
    let mut peer = PeerMetadata::default();
    if let Some(value::Kind::StringValue(id)) = s.fields.get(ID_KEY).and_then(|v| v.kind.clone()) {
        peer.id = id;
    }
    if let Some(value::Kind::StructValue(m)) = s.fields.get(METADATA_KEY).and_then(|v| v.kind.clone()) {
        peer.metadata = m;
    }
    Ok(peer)
}

/// The node metadata a peer gets: the `EXCHANGE_KEYS` (or pilot-agent's default keys) of it.
pub fn exchanged_metadata(node: &NodeInfo) -> Struct {
    let meta = node.metadata.clone().unwrap_or_default();
    let keys: Vec<String> = match meta.fields.get("EXCHANGE_KEYS").and_then(|v| v.kind.as_ref()) {
        Some(value::Kind::StringValue(k)) => {
            k.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
        }
        _ => DEFAULT_KEYS.iter().map(|s| s.to_string()).collect(),
    };
    Struct { fields: meta.fields.into_iter().filter(|(k, _)| keys.iter().any(|x| x == k)).collect() }
}

/// This node's header: magic, length, Any(Struct{metadata, id}).
fn own_header(node: &NodeInfo) -> Vec<u8> {
    let exchanged = exchanged_metadata(node);
    let mut outer = Struct::default();
    outer.fields.insert(METADATA_KEY.into(), Value { kind: Some(value::Kind::StructValue(exchanged)) });
    outer.fields.insert(ID_KEY.into(), Value { kind: Some(value::Kind::StringValue(node.id.clone())) });
    let payload = Any { type_url: STRUCT_TYPE_URL.into(), value: outer.encode_to_vec() }.encode_to_vec();
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&MAGIC.to_be_bytes());
    h.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    h.extend_from_slice(&payload);
    h
}

/// A stream whose first reads return `prefix` (bytes already read past a header).
pub struct Prefixed<IO> {
    prefix: Vec<u8>,
    pos: usize,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Vec<u8>, inner: IO) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ns: &str) -> NodeInfo {
        let mut meta = Struct::default();
        for (k, v) in [("NAMESPACE", ns), ("WORKLOAD_NAME", "app-v1"), ("ISTIO_VERSION", "1.20.8")] {
            meta.fields.insert(k.into(), Value { kind: Some(value::Kind::StringValue(v.into())) });
        }
        NodeInfo { id: id.into(), cluster: "c".into(), metadata: Some(meta), ..Default::default() }
    }

    fn mx(n: &NodeInfo) -> MetadataExchange {
        MetadataExchange { protocol: "istio-peer-exchange".into(), header: own_header(n) }
    }

    #[tokio::test]
    async fn both_sides_exchange_and_keep_the_payload() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let (client, server) = (mx(&node("sidecar~a", "ns-a")), mx(&node("sidecar~b", "ns-b")));
        let c = tokio::spawn(async move {
            let r = client.exchange(&mut a).await;
            a.write_all(b"payload").await.ok();
            r
        });
        let (peer, rest) = server.exchange(&mut b).await.unwrap();
        let peer = peer.unwrap();
        assert_eq!(peer.id, "sidecar~a");
        assert_eq!(peer.get("NAMESPACE"), Some("ns-a"));
        assert_eq!(peer.get("WORKLOAD_NAME"), Some("app-v1"));
        // Only the exchange keys travel.
        assert_eq!(peer.get("ISTIO_VERSION"), None);
        let (client_saw, _) = c.await.unwrap().unwrap();
        assert_eq!(client_saw.unwrap().get("NAMESPACE"), Some("ns-b"));
        let mut p = Prefixed::new(rest, b);
        let mut got = vec![0u8; 7];
        p.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"payload");
    }

    #[tokio::test]
    async fn a_peer_without_the_filter_is_passed_through() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (peer, rest) = mx(&node("b", "ns")).exchange(&mut b).await.unwrap();
        assert!(peer.is_none());
        let mut p = Prefixed::new(rest, b);
        let mut got = vec![0u8; 16];
        p.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        // The peer received our header, magic first.
        let mut magic = [0u8; 4];
        a.read_exact(&mut magic).await.unwrap();
        assert_eq!(u32::from_be_bytes(magic), MAGIC);
    }

    #[tokio::test]
    async fn oversized_or_garbled_headers_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut h = MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&(1u32 << 30).to_be_bytes());
        a.write_all(&h).await.unwrap();
        assert!(mx(&node("b", "ns")).exchange(&mut b).await.is_err());
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut h = MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&3u32.to_be_bytes());
        h.extend_from_slice(&[0xff, 0xff, 0xff]);
        a.write_all(&h).await.unwrap();
        assert!(mx(&node("b", "ns")).exchange(&mut b).await.is_err());
    }
}
