//! The compressor libraries (`envoy.compression.{gzip,brotli,zstd}.compressor`): their config
//! with Envoy's defaults, and a streaming encoder that flushes after every chunk.

use std::io::Write;

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::extensions::compression::brotli::compressor::v3::{Brotli, brotli};
use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3::{Gzip, gzip};
use envoy_types::pb::envoy::extensions::compression::zstd::compressor::v3::Zstd;

use crate::config::ConfigError;

/// A configured compression library (small and `Copy`: encoders are made per response).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Library {
    Gzip { level: u32 },
    Brotli { quality: u32, window_bits: u32, input_block_bits: u32, mode: u8, no_literal_context: bool },
    Zstd { level: i32, checksum: bool },
}

const GZIP: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI: &str = "envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD: &str = "envoy.extensions.compression.zstd.compressor.v3.Zstd";

fn unpack<T: prost::Message + prost::Name + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<T, ConfigError> {
    xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))
}

fn ranged(v: Option<u32>, default: u32, lo: u32, hi: u32, field: &str) -> Result<u32, ConfigError> {
    let v = v.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(ConfigError::new(field, format!("value must be inside range [{lo}, {hi}]: {v}")));
    }
    Ok(v)
}

impl Library {
    pub fn from_extension(e: &TypedExtensionConfig) -> Result<Self, ConfigError> {
        let Some(any) = &e.typed_config else {
            return Err(ConfigError::new("typed_config", "value is required"));
        };
        let t = xds_client::any::effective_type_name(any);
        match t.as_str() {
            GZIP => {
                let g: Gzip = unpack(any)?;
                ranged(g.memory_level.map(|v| v.value), 5, 1, 9, "typed_config.memory_level")?;
                ranged(g.window_bits.map(|v| v.value), 12, 9, 15, "typed_config.window_bits")?;
                ranged(g.chunk_size.map(|v| v.value), 4096, 4096, 65536, "typed_config.chunk_size")?;
                // DEFAULT_COMPRESSION is zlib's level 6; the others are the level itself.
                let level = match gzip::CompressionLevel::try_from(g.compression_level) {
                    Ok(gzip::CompressionLevel::DefaultCompression) | Err(_) => 6,
                    Ok(l) => l as u32,
                };
                Ok(Library::Gzip { level })
            }
            BROTLI => {
                let b: Brotli = unpack(any)?;
                Ok(Library::Brotli {
                    quality: ranged(b.quality.map(|v| v.value), 3, 0, 11, "typed_config.quality")?,
                    window_bits: ranged(b.window_bits.map(|v| v.value), 18, 10, 24, "typed_config.window_bits")?,
                    input_block_bits: ranged(
                        b.input_block_bits.map(|v| v.value),
                        24,
                        16,
                        24,
                        "typed_config.input_block_bits",
                    )?,
                    mode: match brotli::EncoderMode::try_from(b.encoder_mode) {
                        Ok(brotli::EncoderMode::Text) => 1,
                        Ok(brotli::EncoderMode::Font) => 2,
                        _ => 0,
                    },
                    no_literal_context: b.disable_literal_context_modeling,
                })
            }
            ZSTD => {
                let z: Zstd = unpack(any)?;
                if z.dictionary.is_some() {
                    return Err(ConfigError::new("typed_config.dictionary", "zstd dictionaries are not supported"));
                }
                Ok(Library::Zstd {
                    level: z.compression_level.map(|v| v.value as i32).unwrap_or(3),
                    checksum: z.enable_checksum,
                })
            }
            other => Err(ConfigError::new(
                "typed_config",
                format!("Didn't find a registered implementation for '{}' with type URL: '{other}'", e.name),
            )),
        }
    }

    /// The `content-encoding` token.
    pub fn content_encoding(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "br",
            Library::Zstd { .. } => "zstd",
        }
    }

    /// The stats segment Envoy uses for the library (`...compressor.<name>.<this>.`).
    pub fn stats_prefix(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "brotli",
            Library::Zstd { .. } => "zstd",
        }
    }

    pub fn encoder(&self) -> std::io::Result<StreamEncoder> {
        Ok(match *self {
            Library::Gzip { level } => {
                StreamEncoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level)))
            }
            Library::Brotli { quality, window_bits, input_block_bits, mode, no_literal_context } => {
                let params = ::brotli::enc::BrotliEncoderParams {
                    quality: quality as i32,
                    lgwin: window_bits as i32,
                    lgblock: input_block_bits as i32,
                    mode: match mode {
                        1 => ::brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_TEXT,
                        2 => ::brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_FONT,
                        _ => ::brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_GENERIC,
                    },
                    disable_literal_context_modeling: i32::from(no_literal_context),
                    ..Default::default()
                };
                StreamEncoder::Brotli(Box::new(::brotli::CompressorWriter::with_params(Vec::new(), 4096, &params)))
            }
            Library::Zstd { level, checksum } => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                e.include_checksum(checksum)?;
                StreamEncoder::Zstd(e)
            }
        })
    }
}

/// A compressor writing into a buffer that is drained after every chunk.
pub enum StreamEncoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<::brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl StreamEncoder {
    /// Compresses `data` and flushes, returning what is ready to send.
    pub fn compress(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        Ok(match self {
            StreamEncoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                std::mem::take(e.get_mut())
            }
            StreamEncoder::Brotli(e) => {
                e.write_all(data)?;
                e.flush()?;
                std::mem::take(e.get_mut())
            }
            StreamEncoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                std::mem::take(e.get_mut())
            }
        })
    }

    /// Ends the stream, returning the last bytes.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            StreamEncoder::Gzip(e) => e.finish(),
            StreamEncoder::Brotli(e) => Ok(e.into_inner()),
            StreamEncoder::Zstd(e) => e.finish(),
        }
    }
}
