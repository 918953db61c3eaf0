//! Unit tests of the compressor filter: config translation and compression on real bodies.

use std::io::Read;

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::extensions::compression::brotli::compressor::v3::Brotli;
use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3::Gzip;
use envoy_types::pb::envoy::extensions::compression::zstd::compressor::v3::Zstd;
use envoy_types::pb::envoy::extensions::filters::http::compressor::v3::compressor::ResponseDirectionConfig;
use http_body_util::BodyExt;

use super::*;

fn lib_any<T: prost::Message + prost::Name>(name: &str, m: &T) -> TypedExtensionConfig {
    TypedExtensionConfig { name: name.into(), typed_config: Some(xds_client::any::pack(m)) }
}

fn config(lib: TypedExtensionConfig) -> Arc<CompressorConfig> {
    let p = Compressor { compressor_library: Some(lib), ..Default::default() };
    Arc::new(CompressorConfig::from_proto(&p, &BuildCtx::default()).unwrap())
}

fn gzip() -> Arc<CompressorConfig> {
    config(lib_any("gz", &Gzip::default()))
}
fn brotli() -> Arc<CompressorConfig> {
    config(lib_any("br", &Brotli::default()))
}
fn zstd() -> Arc<CompressorConfig> {
    config(lib_any("zs", &Zstd::default()))
}

#[test]
fn config_accept_and_reject() {
    let p = Compressor::default();
    assert!(CompressorConfig::from_proto(&p, &BuildCtx::default()).is_err(), "library is required");
    let bad =
        Brotli { quality: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 12 }), ..Default::default() };
    let p = Compressor { compressor_library: Some(lib_any("b", &bad)), ..Default::default() };
    assert!(CompressorConfig::from_proto(&p, &BuildCtx::default()).is_err(), "quality out of range");
    let c = gzip();
    assert_eq!(c.min_content_length, 30);
    assert!(c.content_type_allowed(Some("application/json")));
    assert!(!c.content_type_allowed(Some("image/png")));
    assert_eq!(c.encoding, "gzip");
    let p = Compressor {
        compressor_library: Some(lib_any("gz", &Gzip::default())),
        response_direction_config: Some(ResponseDirectionConfig {
            uncompressible_response_codes: vec![100],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(CompressorConfig::from_proto(&p, &BuildCtx::default()).is_err());
}

#[test]
fn negotiation_follows_envoy() {
    let chain = vec![brotli(), zstd(), gzip()];
    let pick = |ae: &str| {
        let d = choose_encoding(ae, &chain, Some("text/plain"));
        (d.encoding, d.stat)
    };
    assert_eq!(pick("gzip"), ("gzip".into(), HeaderStat::ValidCompressor));
    assert_eq!(pick("gzip, br"), ("gzip".into(), HeaderStat::ValidCompressor), "first of equal q wins");
    assert_eq!(pick("gzip;q=0.5, br;q=0.8"), ("br".into(), HeaderStat::ValidCompressor));
    assert_eq!(pick("*"), ("br".into(), HeaderStat::Wildcard), "first registered");
    assert_eq!(pick("br;q=0, *"), ("zstd".into(), HeaderStat::Wildcard));
    assert_eq!(pick("identity"), ("identity".into(), HeaderStat::Identity));
    assert_eq!(pick("deflate"), ("identity".into(), HeaderStat::NotValid));
    assert_eq!(pick("gzip;q=0"), ("identity".into(), HeaderStat::NotValid));
    assert_eq!(pick(""), ("identity".into(), HeaderStat::NotValid));
}

async fn roundtrip(lib: Library, chunks: &[&'static [u8]]) -> Vec<u8> {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
        chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c)))).collect();
    let inner = ResponseBody::Boxed(Box::pin(http_body_util::StreamBody::new(futures_util::stream::iter(frames))));
    let stats = gzip().stats.clone();
    let body = Compressed { inner, enc: Some(lib.encoder().unwrap()), stats, trailers: None };
    body.collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn streams_decode_back() {
    let chunks: &[&'static [u8]] = &[b"hello hello hello hello hello ", b"world world world world"];
    let want = b"hello hello hello hello hello world world world world".to_vec();

    let gz = roundtrip(gzip().library, chunks).await;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
    assert_eq!(out, want);

    let br = roundtrip(brotli().library, chunks).await;
    let mut out = Vec::new();
    ::brotli::Decompressor::new(&br[..], 4096).read_to_end(&mut out).unwrap();
    assert_eq!(out, want);

    let zs = roundtrip(zstd().library, chunks).await;
    assert_eq!(::zstd::stream::decode_all(&zs[..]).unwrap(), want);
}

#[test]
fn vary_is_merged() {
    let mut h = HeaderMap::new();
    insert_vary(&mut h);
    assert_eq!(h[header::VARY], "Accept-Encoding");
    let mut h = HeaderMap::new();
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    insert_vary(&mut h);
    assert_eq!(h[header::VARY], "origin, Accept-Encoding");
    insert_vary(&mut h);
    assert_eq!(h[header::VARY], "origin, Accept-Encoding");
}
