//! The hashes of the index, as the spec spells them: XXH3-64 and XXH3-128 in lowercase hex.

pub fn xxh3_64_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

pub fn xxh3_128_hex(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// An XXH3-128 computed over bytes that arrive in pieces.
#[derive(Clone)]
pub struct Hasher128(xxhash_rust::xxh3::Xxh3);

impl Default for Hasher128 {
    fn default() -> Self {
        Hasher128(xxhash_rust::xxh3::Xxh3::new())
    }
}

impl Hasher128 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes)
    }
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0.digest128())
    }
}
