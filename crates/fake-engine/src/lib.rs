//! The test-only fake engine's library half: files its scenarios need.

/// A minimal valid GGUF file (version 3, no tensors, `general.architecture = "fake"`): enough for
/// pool-managerd's model checks, never loaded by a real engine.
pub fn placeholder_gguf() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    let value = b"fake";
    b.extend_from_slice(&(value.len() as u64).to_le_bytes());
    b.extend_from_slice(value);
    b
}
