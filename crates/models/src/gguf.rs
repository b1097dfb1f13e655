//! GGUF header facts (v2/v3, little-endian): architecture, training context, parameter count,
//! quantization and chat-template presence. Reads the header, the metadata KVs and the tensor
//! infos through a `BufReader`, never the tensor data. Every length is checked against what is
//! left of the file, so a corrupt file gives `InvalidData` (never a panic or a huge allocation).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use api::catalog::GgufInfo;

const MAGIC: &[u8; 4] = b"GGUF";
/// Keys are at most 65535 bytes by the spec.
const MAX_KEY: u64 = 65_535;
/// Strings we keep (the architecture name) are short.
const MAX_KEPT_STRING: u64 = 4096;
/// Arrays of arrays are legal; more nesting than this is a corrupt file.
const MAX_NESTING: u32 = 4;
/// GGML_MAX_DIMS is 4; allow some slack.
const MAX_DIMS: u32 = 8;

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Reads the facts of the GGUF file at `path`.
pub fn read_info(path: &Path) -> io::Result<GgufInfo> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = Reader {
        inner: BufReader::with_capacity(64 * 1024, file),
        pos: 0,
        len,
    };
    parse(&mut r).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => invalid(format!("{}: truncated GGUF file", path.display())),
        io::ErrorKind::InvalidData => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        ),
        _ => e,
    })
}

/// `general.file_type` by name.
pub fn file_type_name(t: u64) -> String {
    match t {
        0 => "F32".into(),
        1 => "F16".into(),
        2 => "Q4_0".into(),
        3 => "Q4_1".into(),
        7 => "Q8_0".into(),
        8 => "Q5_0".into(),
        9 => "Q5_1".into(),
        10 => "Q2_K".into(),
        11 => "Q3_K_S".into(),
        12 => "Q3_K_M".into(),
        13 => "Q3_K_L".into(),
        14 => "Q4_K_S".into(),
        15 => "Q4_K_M".into(),
        16 => "Q5_K_S".into(),
        17 => "Q5_K_M".into(),
        18 => "Q6_K".into(),
        n => format!("type{n}"),
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn parse<R: Read + Seek>(r: &mut Reader<R>) -> io::Result<GgufInfo> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a GGUF file (bad magic)"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(invalid(format!(
            "unsupported GGUF version {version} (2 and 3 are supported)"
        )));
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    // A KV takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least 8 + 4 + 4 + 8.
    if kv_count > r.remaining() / 13 || tensor_count > r.remaining() / 24 {
        return Err(invalid(format!(
            "implausible counts: {kv_count} KVs, {tensor_count} tensors"
        )));
    }

    let mut info = GgufInfo::default();
    let mut file_type = None;
    let mut context_lengths: Vec<(String, u64)> = Vec::new();
    for _ in 0..kv_count {
        let key = r.key()?;
        let ty = r.u32()?;
        match (key.as_str(), ty) {
            ("general.architecture", T_STRING) => info.architecture = Some(r.kept_string()?),
            ("general.file_type", _) => file_type = r.integer(ty)?,
            ("tokenizer.chat_template", T_STRING) => {
                info.chat_template = true;
                r.skip_value(ty, 0)?;
            }
            (k, _) if k.ends_with(".context_length") => {
                if let Some(v) = r.integer(ty)? {
                    context_lengths.push((key, v));
                }
            }
            _ => r.skip_value(ty, 0)?,
        }
    }
    if let Some(arch) = &info.architecture {
        let want = format!("{arch}.context_length");
        info.context_length = context_lengths
            .iter()
            .find(|(k, _)| *k == want)
            .map(|(_, v)| *v);
    }
    info.quantization = file_type.map(file_type_name);

    let mut params: u64 = 0;
    for _ in 0..tensor_count {
        r.skip_string()?; // name
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(invalid(format!("tensor with {n_dims} dimensions")));
        }
        let mut elements: u64 = 1;
        for _ in 0..n_dims {
            let d = r.u64()?;
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| invalid("tensor element count overflows"))?;
        }
        let _ggml_type = r.u32()?;
        let _offset = r.u64()?;
        params = params
            .checked_add(elements)
            .ok_or_else(|| invalid("parameter count overflows"))?;
    }
    info.parameter_count = Some(params);
    Ok(info)
}

/// A reader that knows its position and the file length, so every length can be checked first.
struct Reader<R> {
    inner: BufReader<R>,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64) -> io::Result<()> {
        if n > self.remaining() {
            return Err(invalid(format!(
                "length {n} at offset {} runs past the end of the file ({} bytes)",
                self.pos, self.len
            )));
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.need(buf.len() as u64)?;
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        self.need(n)?;
        let step = i64::try_from(n).map_err(|_| invalid("skip too large"))?;
        self.inner.seek_relative(step)?;
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn key(&mut self) -> io::Result<String> {
        let n = self.u64()?;
        if n > MAX_KEY {
            return Err(invalid(format!("metadata key of {n} bytes")));
        }
        self.bytes_to_string(n)
    }

    fn kept_string(&mut self) -> io::Result<String> {
        let n = self.u64()?;
        if n > MAX_KEPT_STRING {
            return Err(invalid(format!(
                "string of {n} bytes where a short name was expected"
            )));
        }
        self.bytes_to_string(n)
    }

    fn bytes_to_string(&mut self, n: u64) -> io::Result<String> {
        self.need(n)?;
        let mut buf = vec![0u8; usize::try_from(n).map_err(|_| invalid("string too large"))?];
        self.read_exact(&mut buf)?;
        String::from_utf8(buf).map_err(|_| invalid("string is not UTF-8"))
    }

    fn skip_string(&mut self) -> io::Result<()> {
        let n = self.u64()?;
        self.skip(n)
    }

    /// Reads an integer value of any integer type; other types are skipped and give `None`.
    fn integer(&mut self, ty: u32) -> io::Result<Option<u64>> {
        let v = match ty {
            T_U8 | T_I8 => {
                let mut b = [0u8; 1];
                self.read_exact(&mut b)?;
                u64::from(b[0])
            }
            T_U16 | T_I16 => {
                let mut b = [0u8; 2];
                self.read_exact(&mut b)?;
                u64::from(u16::from_le_bytes(b))
            }
            T_U32 | T_I32 => u64::from(self.u32()?),
            T_U64 | T_I64 => self.u64()?,
            _ => {
                self.skip_value(ty, 0)?;
                return Ok(None);
            }
        };
        Ok(Some(v))
    }

    fn skip_value(&mut self, ty: u32, depth: u32) -> io::Result<()> {
        if let Some(size) = scalar_size(ty) {
            return self.skip(size);
        }
        match ty {
            T_STRING => self.skip_string(),
            T_ARRAY => {
                if depth >= MAX_NESTING {
                    return Err(invalid("arrays nested too deeply"));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                if let Some(size) = scalar_size(elem) {
                    let total = count
                        .checked_mul(size)
                        .ok_or_else(|| invalid("array size overflows"))?;
                    return self.skip(total);
                }
                // Strings and arrays take at least 8 bytes (a length or a type and a count) each.
                let min = if elem == T_STRING { 8 } else { 12 };
                if count > self.remaining() / min {
                    return Err(invalid(format!(
                        "array of {count} elements runs past the end of the file"
                    )));
                }
                for _ in 0..count {
                    self.skip_value(elem, depth + 1)?;
                }
                Ok(())
            }
            other => Err(invalid(format!("unknown metadata value type {other}"))),
        }
    }
}

fn scalar_size(ty: u32) -> Option<u64> {
    match ty {
        T_U8 | T_I8 | T_BOOL => Some(1),
        T_U16 | T_I16 => Some(2),
        T_U32 | T_I32 | T_F32 => Some(4),
        T_U64 | T_I64 | T_F64 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The dev model (scripts/dev-assets.sh): `$LLORCH_DEV_MODEL` or the default cache path.
    pub(crate) fn dev_model() -> PathBuf {
        let path = match std::env::var_os("LLORCH_DEV_MODEL") {
            Some(p) => PathBuf::from(p),
            None => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/root"));
                home.join(".cache/llama-orch/models/dev/SmolLM2-135M-Instruct.Q4_1.gguf")
            }
        };
        assert!(
            path.is_file(),
            "dev model {} is missing: run scripts/dev-assets.sh first",
            path.display()
        );
        path
    }

    /// A tiny GGUF in memory: the given KVs (already encoded) and tensors.
    fn build(version: u32, kvs: &[Vec<u8>], tensors: &[(&str, &[u64])]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for kv in kvs {
            out.extend_from_slice(kv);
        }
        for (name, dims) in tensors {
            out.extend_from_slice(&gstr(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
        }
        out
    }

    fn gstr(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
        let mut v = gstr(key);
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn write_tmp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        (dir, path)
    }

    fn synthetic() -> Vec<u8> {
        let mut tokens = T_STRING.to_le_bytes().to_vec();
        tokens.extend_from_slice(&3u64.to_le_bytes());
        for t in ["a", "bb", "ccc"] {
            tokens.extend_from_slice(&gstr(t));
        }
        let mut scores = T_F32.to_le_bytes().to_vec();
        scores.extend_from_slice(&3u64.to_le_bytes());
        scores.extend_from_slice(&[0u8; 12]);
        let mut nested = T_ARRAY.to_le_bytes().to_vec();
        nested.extend_from_slice(&1u64.to_le_bytes());
        nested.extend_from_slice(&T_U8.to_le_bytes());
        nested.extend_from_slice(&2u64.to_le_bytes());
        nested.extend_from_slice(&[1, 2]);
        build(
            3,
            &[
                kv("general.architecture", T_STRING, &gstr("qwen2")),
                kv("general.name", T_STRING, &gstr("tiny")),
                kv("general.flag", T_BOOL, &[1]),
                kv("general.f64", T_F64, &[0; 8]),
                kv("llama.context_length", T_U32, &4096u32.to_le_bytes()),
                kv("qwen2.context_length", T_U64, &32768u64.to_le_bytes()),
                kv("general.file_type", T_U32, &15u32.to_le_bytes()),
                kv("tokenizer.ggml.tokens", T_ARRAY, &tokens),
                kv("tokenizer.ggml.scores", T_ARRAY, &scores),
                kv("x.nested", T_ARRAY, &nested),
            ],
            &[("a", &[4, 8]), ("b", &[16])],
        )
    }

    #[test]
    fn dev_model_facts() {
        let info = read_info(&dev_model()).expect("read_info on the dev model");
        println!("dev model: {info:?}");
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.context_length, Some(8192));
        assert_eq!(info.quantization.as_deref(), Some("Q4_1"));
        assert!(info.chat_template);
        let params = info.parameter_count.expect("parameter count");
        assert!(
            (130_000_000..140_000_000).contains(&params),
            "parameter_count {params}"
        );
    }

    #[test]
    fn synthetic_file_all_value_types() {
        let (_dir, path) = write_tmp("t.gguf", &synthetic());
        let info = read_info(&path).expect("parse");
        assert_eq!(info.architecture.as_deref(), Some("qwen2"));
        assert_eq!(info.context_length, Some(32768));
        assert_eq!(info.quantization.as_deref(), Some("Q4_K_M"));
        assert!(!info.chat_template);
        assert_eq!(info.parameter_count, Some(48));
    }

    #[test]
    fn every_truncation_is_invalid_data() {
        let bytes = synthetic();
        let dir = tempfile::tempdir().expect("tempdir");
        for cut in 0..bytes.len() {
            let path = dir.path().join("cut.gguf");
            std::fs::write(&path, &bytes[..cut]).expect("write");
            let err = read_info(&path).expect_err("a truncated file must fail");
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidData,
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_headers_are_invalid_data() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bad magic", b"GGUX\x03\0\0\0".to_vec()),
            ("version 1", build(1, &[], &[])),
            ("huge kv count", {
                let mut b = build(3, &[], &[]);
                b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            }),
            ("huge key", {
                let mut k = u64::MAX.to_le_bytes().to_vec();
                k.extend_from_slice(b"abc");
                build(3, &[k], &[])
            }),
            (
                "huge string value",
                build(
                    3,
                    &[kv("general.name", T_STRING, &(1u64 << 60).to_le_bytes())],
                    &[],
                ),
            ),
            ("huge array", {
                let mut a = T_U64.to_le_bytes().to_vec();
                a.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
                build(3, &[kv("x", T_ARRAY, &a)], &[])
            }),
            ("huge string array", {
                let mut a = T_STRING.to_le_bytes().to_vec();
                a.extend_from_slice(&u64::MAX.to_le_bytes());
                build(3, &[kv("x", T_ARRAY, &a)], &[])
            }),
            ("unknown type", build(3, &[kv("x", 99, &[0; 8])], &[])),
            ("too many dims", build(3, &[], &[("t", &[1; 9])])),
            ("dims overflow", build(3, &[], &[("t", &[u64::MAX, 2])])),
            ("deep nesting", {
                let mut a = Vec::new();
                for _ in 0..6 {
                    a.extend_from_slice(&T_ARRAY.to_le_bytes());
                    a.extend_from_slice(&1u64.to_le_bytes());
                }
                a.extend_from_slice(&T_U8.to_le_bytes());
                a.extend_from_slice(&0u64.to_le_bytes());
                build(3, &[kv("x", T_ARRAY, &a)], &[])
            }),
        ];
        for (name, bytes) in cases {
            let (_dir, path) = write_tmp("bad.gguf", &bytes);
            let err = read_info(&path).expect_err(name);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
        }
    }

    #[test]
    fn truncated_dev_model_header() {
        // The first 64 KiB of the real model: the header and part of the vocabulary.
        let mut head = vec![0u8; 64 * 1024];
        File::open(dev_model())
            .and_then(|mut f| f.read_exact(&mut head))
            .expect("read the dev model");
        let (_dir, path) = write_tmp("head.gguf", &head);
        let err = read_info(&path).expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn file_type_names() {
        assert_eq!(file_type_name(3), "Q4_1");
        assert_eq!(file_type_name(18), "Q6_K");
        assert_eq!(file_type_name(4), "type4");
    }
}
