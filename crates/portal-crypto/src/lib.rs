//! Cryptography and randomness adapters for `portal-core`'s ports:
//!
//! - [`AesGcmSealer`] — `SecretSealer`: AES-256-GCM with a random 96-bit nonce per value, and
//!   HMAC-SHA256 lookup digests under a key derived from the same master key;
//! - [`Argon2Hasher`] — `PasswordHasher`: Argon2id with at least OWASP's minimum parameters
//!   (m = 19456 KiB, t = 2, p = 1), on a few dedicated threads that bound its memory;
//! - [`RandomIds`] — `IdGenerator`: UUIDv7 ids, payment references, 256-bit tokens and numeric
//!   codes from the operating system's randomness.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::password_hash::{Output, ParamsString, PasswordHash as Phc, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use portal_core::account::{LookupDigest, PasswordHash, SealedSecret, SecretToken};
use portal_core::password::Password;
use portal_core::ports::{HashError, IdGenerator, PasswordHasher, SealError, SecretSealer};
use portal_core::reference::{PaymentReference, REFERENCE_DATA_LEN};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Version byte prefixed to sealed values, so keys and algorithms can rotate.
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// A bad sealing key in configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sealing key must be 64 hexadecimal characters (32 bytes)")]
pub struct KeyError;

/// `SecretSealer` over AES-256-GCM and HMAC-SHA256.
pub struct AesGcmSealer {
    cipher: Aes256Gcm,
    digest_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AesGcmSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesGcmSealer(<key redacted>)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl AesGcmSealer {
    /// A sealer from a 32-byte master key given as 64 hex characters. The encryption and
    /// digest keys are derived from it for separate purposes.
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return Err(KeyError);
        }
        let mut master = Zeroizing::new([0u8; 32]);
        for (i, slot) in master.iter_mut().enumerate() {
            let byte = hex.get(i * 2..i * 2 + 2).ok_or(KeyError)?;
            *slot = u8::from_str_radix(byte, 16).map_err(|_| KeyError)?;
        }
        let enc = Zeroizing::new(hmac(master.as_slice(), &[b"portal seal v1 encryption"]));
        let digest_key = Zeroizing::new(hmac(master.as_slice(), &[b"portal seal v1 lookup"]));
        let cipher = Aes256Gcm::new_from_slice(enc.as_slice()).map_err(|_| KeyError)?;
        Ok(Self { cipher, digest_key })
    }
}

impl SecretSealer for AesGcmSealer {
    fn seal(&self, plaintext: &str) -> Result<SealedSecret, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| SealError(e.to_string()))?;
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| SealError("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(SealedSecret(out))
    }

    fn unseal(&self, sealed: &SealedSecret) -> Result<String, SealError> {
        let bytes = &sealed.0;
        if bytes.first() != Some(&SEAL_VERSION) || bytes.len() < 1 + NONCE_LEN + 16 {
            return Err(SealError("not a sealed value of this version".into()));
        }
        let nonce = bytes
            .get(1..1 + NONCE_LEN)
            .ok_or_else(|| SealError("truncated".into()))?;
        let ct = bytes
            .get(1 + NONCE_LEN..)
            .ok_or_else(|| SealError("truncated".into()))?;
        let pt = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError("the value was altered or sealed under another key".into()))?;
        String::from_utf8(pt).map_err(|_| SealError("sealed value is not text".into()))
    }

    fn lookup_digest(&self, value: &str) -> LookupDigest {
        LookupDigest(to_hex(&hmac(
            self.digest_key.as_slice(),
            &[value.as_bytes()],
        )))
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A job for the hashing threads.
type Job = Box<dyn FnOnce() + Send>;

/// A few dedicated threads for Argon2. Each hash needs 19 MiB; bounding the threads bounds the
/// memory (and CPU) password hashing can take, however many logins arrive at once, instead of
/// letting every blocking-pool thread keep its own 19 MiB.
#[derive(Debug)]
struct HashPool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl HashPool {
    fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if spawned.is_err() {
                break;
            }
        }
        Self { jobs: tx }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.jobs
            .send(job)
            .map_err(|_| HashError("the hashing threads stopped".into()))?;
        answer
            .await
            .map_err(|_| HashError("a hashing thread failed".into()))
    }
}

/// `PasswordHasher` with Argon2id, on a small pool of dedicated threads.
#[derive(Debug, Clone)]
pub struct Argon2Hasher {
    params: Params,
    pool: std::sync::Arc<HashPool>,
}

impl Argon2Hasher {
    /// Argon2id with OWASP's minimum: m = 19456 KiB, t = 2, p = 1, one thread per core.
    pub fn new() -> Self {
        Self::with_params(Params::default())
    }

    /// Argon2id with explicit parameters (never below the minimum in production).
    pub fn with_params(params: Params) -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(2, std::num::NonZeroUsize::get)
            .min(4);
        Self {
            params,
            pool: std::sync::Arc::new(HashPool::new(threads)),
        }
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }
}

impl Default for Argon2Hasher {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    /// The Argon2 working memory of a hashing thread, kept for the thread's life: allocating
    /// 19 MiB per hash and freeing it leaves the allocator holding far more than 19 MiB.
    static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn hash_err(e: impl std::fmt::Display) -> HashError {
    HashError(e.to_string())
}

/// Runs Argon2 into `out` with this thread's reusable working memory.
fn argon2_into(
    argon: &Argon2<'_>,
    blocks_needed: usize,
    secret: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), HashError> {
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < blocks_needed {
            blocks.resize(blocks_needed, Block::default());
        }
        let memory = blocks
            .get_mut(..blocks_needed)
            .ok_or_else(|| hash_err("working memory"))?;
        argon
            .hash_password_into_with_memory(secret, salt, out, memory)
            .map_err(hash_err)
    })
}

fn hash_with_fresh_salt(
    argon: &Argon2<'_>,
    params: &Params,
    secret: &[u8],
) -> Result<PasswordHash, HashError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(hash_err)?;
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).map_err(hash_err)?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        argon2_into(argon, params.block_count(), secret, salt_bytes, out)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(hash_err)?;
    let phc = Phc {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(hash_err)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(PasswordHash(phc.to_string()))
}

fn verify_phc(phc: &str, secret: &[u8]) -> Result<bool, HashError> {
    let parsed = Phc::new(phc).map_err(hash_err)?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(hash_err("not an Argon2id hash"));
    }
    let params = Params::try_from(&parsed).map_err(hash_err)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(hash_err("the hash has no salt or output"));
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(hash_err)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let computed = Output::init_with(expected.len(), |out| {
        argon2_into(&argon, params.block_count(), secret, salt_bytes, out)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(hash_err)?;
    // Output's equality is constant time.
    Ok(computed == expected)
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        let secret = Zeroizing::new(password.expose().as_bytes().to_vec());
        let (argon, params) = (self.argon(), self.params.clone());
        self.pool
            .run(move || hash_with_fresh_salt(&argon, &params, &secret))
            .await?
    }

    async fn verify(&self, candidate: &str, hash: Option<PasswordHash>) -> Result<bool, HashError> {
        let secret = Zeroizing::new(candidate.as_bytes().to_vec());
        let (argon, params) = (self.argon(), self.params.clone());
        self.pool
            .run(move || match hash {
                Some(h) => verify_phc(&h.0, &secret),
                // Unknown user: spend the same work, then fail.
                None => hash_with_fresh_salt(&argon, &params, &secret).map(|_| false),
            })
            .await?
    }
}

/// `IdGenerator` from the operating system's randomness.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS generator failing is unrecoverable for a payment system; fall back to the
    // UUIDv7 generator's randomness rather than panicking, and keep going.
    if getrandom::getrandom(&mut b).is_err() {
        for chunk in b.chunks_mut(16) {
            let u = uuid::Uuid::now_v7().into_bytes();
            for (dst, src) in chunk.iter_mut().zip(u.iter().rev()) {
                *dst = *src;
            }
        }
    }
    b
}

impl IdGenerator for RandomIds {
    fn new_id(&self) -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }

    fn payment_reference(&self) -> PaymentReference {
        // Rejection sampling keeps each symbol uniform over the 31 values.
        let mut values = [0u8; REFERENCE_DATA_LEN];
        let mut filled = 0;
        while filled < REFERENCE_DATA_LEN {
            for b in random_bytes::<32>() {
                if b < 248 && filled < REFERENCE_DATA_LEN {
                    if let Some(slot) = values.get_mut(filled) {
                        *slot = b % 31;
                    }
                    filled += 1;
                }
            }
        }
        PaymentReference::from_values(values)
    }

    fn secret_token(&self) -> SecretToken {
        SecretToken::new(to_hex(&random_bytes::<32>()))
    }

    fn numeric_code(&self, digits: u32) -> SecretToken {
        let digits = digits.clamp(4, 9);
        let modulus = 10u64.pow(digits);
        // Rejection sampling avoids modulo bias.
        let limit = u64::MAX - (u64::MAX % modulus);
        loop {
            let n = u64::from_le_bytes(random_bytes::<8>());
            if n < limit {
                return SecretToken::new(format!(
                    "{:0width$}",
                    n % modulus,
                    width = digits as usize
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn seal_round_trips_and_is_randomised() {
        let s = AesGcmSealer::from_hex(KEY).unwrap();
        let a = s.seal("123456789").unwrap();
        let b = s.seal("123456789").unwrap();
        assert_ne!(a, b, "a fresh nonce per value");
        assert_eq!(s.unseal(&a).unwrap(), "123456789");
        let raw = String::from_utf8_lossy(&a.0);
        assert!(!raw.contains("123456789"));
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let s = AesGcmSealer::from_hex(KEY).unwrap();
        let mut sealed = s.seal("123456789").unwrap();
        if let Some(last) = sealed.0.last_mut() {
            *last ^= 1;
        }
        assert!(s.unseal(&sealed).is_err());
        let other = AesGcmSealer::from_hex(&"ab".repeat(32)).unwrap();
        assert!(other.unseal(&s.seal("x").unwrap()).is_err());
        assert!(s.unseal(&SealedSecret(vec![1, 2, 3])).is_err());
    }

    #[test]
    fn lookup_digests_are_keyed_and_stable() {
        let s = AesGcmSealer::from_hex(KEY).unwrap();
        let other = AesGcmSealer::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(s.lookup_digest("123456789"), s.lookup_digest("123456789"));
        assert_ne!(
            s.lookup_digest("123456789"),
            other.lookup_digest("123456789")
        );
        assert_eq!(s.lookup_digest("x").0.len(), 64);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(AesGcmSealer::from_hex("abc").unwrap_err(), KeyError);
        assert_eq!(
            AesGcmSealer::from_hex(&"zz".repeat(32)).unwrap_err(),
            KeyError
        );
    }

    #[tokio::test]
    async fn argon2id_hashes_verify_and_unknown_users_fail() {
        let h = Argon2Hasher::new();
        let p = Password::new("correct horse battery staple", &[]).unwrap();
        let hash = h.hash(&p).await.unwrap();
        assert!(
            hash.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            hash.0
        );
        assert!(
            h.verify("correct horse battery staple", Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !h.verify("wrong horse battery staple", Some(hash))
                .await
                .unwrap()
        );
        assert!(
            !h.verify("correct horse battery staple", None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn hashes_interoperate_with_the_reference_argon2_implementation() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = Argon2Hasher::new();
        let ours = h
            .hash(&Password::new("correct horse battery staple", &[]).unwrap())
            .await
            .unwrap();
        let reference = Argon2::default();
        assert!(
            reference
                .verify_password(b"correct horse battery staple", &Phc::new(&ours.0).unwrap())
                .is_ok()
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = reference
            .hash_password(b"another long passphrase", &salt)
            .unwrap()
            .to_string();
        assert!(
            h.verify(
                "another long passphrase",
                Some(PasswordHash(theirs.clone()))
            )
            .await
            .unwrap()
        );
        assert!(
            !h.verify("another long passphrase!", Some(PasswordHash(theirs)))
                .await
                .unwrap()
        );
        assert!(
            h.verify("x", Some(PasswordHash("not a hash".into())))
                .await
                .is_err()
        );
    }

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let ids = RandomIds;
        let r1 = ids.payment_reference();
        assert_eq!(PaymentReference::parse(&r1.to_string()), Ok(r1.clone()));
        assert_ne!(r1, ids.payment_reference());
        assert_eq!(ids.secret_token().expose().len(), 64);
        let code = ids.numeric_code(6);
        assert_eq!(code.expose().len(), 6);
        assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(ids.new_id(), ids.new_id());
    }
}
