//! The module proxy's answers kept in a [`RemoteStore`]: the server's storage directory (its
//! `mod/`, under the same `--max-size` bound as the build entries) or bucket (`<prefix>/mod`),
//! and the daemon's remote tier. [`EntryModStore`] is a [`ModStore`] over any of them.
//!
//! An answer is stored in the entry format ([`crate::store::format`]), so it carries what a
//! module proxy needs and a bare file would not: the sha256 of its bytes, checked on every
//! read (a damaged or truncated object is a miss, never served), and its put time, which is
//! the age that the TTL of a changing answer counts from (a storage directory refreshes its
//! files' times when they are read, for its LRU, so a file's mtime is not that age). Zips are
//! stored as they are (they are compressed already); small text answers may be compressed.
//!
//! The key of an answer is the sha256 of its storage key ([`Request::storage_key`]) with a
//! prefix of its own, so it has a fixed length whatever the module path (S3 keys are limited
//! to 1,024 bytes; a request path may have 2,048) and the name spaces of build entries and
//! module answers can never meet, even in one store. Immutable answers are stored as entries
//! ([`RemoteStore::put`], in `v1/`): counted by the bound, evicted least recently used first.
//! Answers that change are stored as manifests ([`RemoteStore::put_manifest`], in
//! `prefetch/`), because a put of an entry never replaces one that exists and a manifest put
//! does: they are a few hundred bytes each, one per module or database at most, and like the
//! build's manifests are not counted by the bound (`gc-remote --modules` removes old ones).

use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::body::Body;
use super::cache::{Answer, ModStore, Stored};
use super::path::{Caching, Request};
use crate::ids::{ActionId, BuildKey, OutputId};
use crate::store::format::{self, FLAG_ZSTD, Header};
use crate::store::{ByteStream, MAX_MANIFEST, RemoteStore, Upload};

/// Answers up to this size are encoded in memory and sent in one piece; larger ones (zips)
/// are encoded into a temporary file and streamed from it.
const IN_MEMORY_MAX: u64 = 1 << 20;

/// A [`ModStore`] on a [`RemoteStore`] (see the module doc).
#[derive(Debug, Clone)]
pub struct EntryModStore {
    store: Arc<dyn RemoteStore>,
    /// Where answers are decoded (and large ones encoded): a directory that exists.
    spool: PathBuf,
    /// The largest decoded answer read back (a header that says more is refused unread).
    max_size: u64,
}

/// The 32 bytes that name `key` in the store (the [`ActionId`] of an immutable answer's
/// entry, the [`BuildKey`] of a changing answer's manifest).
pub fn digest(key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"goremotecache goproxy v1\n");
    hasher.update(key.as_bytes());
    hasher.finalize().into()
}

impl EntryModStore {
    /// Answers in `store`, decoded through temporary files in `spool`, none over `max_size`
    /// bytes.
    pub fn new(store: Arc<dyn RemoteStore>, spool: &Path, max_size: u64) -> Self {
        Self {
            store,
            spool: spool.to_path_buf(),
            max_size,
        }
    }

    /// The directory where answers are decoded and encoded (the fetcher spools there too,
    /// when it is the store's own).
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// Where the answers are, for messages.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Whether `key`'s answer changes (so is stored as a manifest); an error for anything
    /// that is not a storage key.
    pub fn mutable(key: &str) -> io::Result<bool> {
        match Request::parse(key) {
            Ok(request) if request.storage_key() == key => {
                Ok(request.caching() != Caching::Immutable)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{key:?} is not a module proxy storage key"),
            )),
        }
    }

    /// Decodes an entry held in memory: the answer, in memory, if it verifies.
    fn decode_bytes(&self, raw: &[u8]) -> io::Result<Stored> {
        let mut out = Vec::new();
        let header =
            format::read_entry_within(&mut &raw[..], &mut out, self.max_size).map_err(corrupt)?;
        Ok(Stored {
            body: Answer::bytes(out),
            len: header.size,
            modified: header.time,
        })
    }

    /// Decodes an entry from `raw` into a new temporary file: the answer, if it verifies.
    /// Blocking.
    fn decode_to_file(&self, mut raw: impl Read) -> io::Result<Stored> {
        let mut out = tempfile::Builder::new()
            .prefix(".answer-")
            .tempfile_in(&self.spool)?;
        let header = {
            let mut writer = BufWriter::with_capacity(64 * 1024, out.as_file_mut());
            let header =
                format::read_entry_within(&mut raw, &mut writer, self.max_size).map_err(corrupt)?;
            writer.flush()?;
            header
        };
        let mut file = out.reopen()?;
        file.rewind()?;
        Ok(Stored {
            body: Answer::File(file),
            len: header.size,
            modified: header.time,
        })
    }
}

/// A damaged entry: an error of its own kind, never data.
fn corrupt(err: format::FormatError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err.to_string())
}

/// The rest of an object's stream, read from a blocking thread (the runtime's `handle` drives
/// it), after the bytes already taken from it.
struct StreamReader {
    handle: tokio::runtime::Handle,
    stream: ByteStream,
    current: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(chunk) => self.current = chunk.map_err(io::Error::other)?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// An entry's header for `body` (read once for its hash and a sample).
fn header_for(body: &Body) -> io::Result<Header> {
    let mut file = body.file.reopen()?;
    let mut hasher = Sha256::new();
    let mut sample = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if sample.len() < format::SAMPLE_LEN {
            let take = n.min(format::SAMPLE_LEN - sample.len());
            sample.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
    }
    Ok(Header {
        flags: if format::compression_pays(body.len, &sample) {
            FLAG_ZSTD
        } else {
            0
        },
        output_id: OutputId(hasher.finalize().into()),
        size: body.len,
        time: SystemTime::now(),
    })
}

#[async_trait]
impl ModStore for EntryModStore {
    async fn get(&self, key: &str) -> io::Result<Option<Stored>> {
        let name = digest(key);
        if Self::mutable(key)? {
            let bytes = self
                .store
                .get_manifest(&BuildKey(name))
                .await
                .map_err(io::Error::other)?;
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            return self.decode_bytes(&bytes).map(Some);
        }
        let stream = self
            .store
            .get(&ActionId(name))
            .await
            .map_err(io::Error::other)?;
        let Some(mut stream) = stream else {
            return Ok(None);
        };
        // A small answer (most of them: `.info`, `.mod`, checksum tiles) is decoded in memory;
        // a larger one (a zip) into a file of its own as it streams in. Either way it is
        // checked whole before anything is served.
        let mut head = Vec::new();
        while head.len() as u64 <= IN_MEMORY_MAX {
            match stream.next().await {
                Some(chunk) => head.extend_from_slice(&chunk.map_err(io::Error::other)?),
                None => return self.decode_bytes(&head).map(Some),
            }
        }
        let this = self.clone();
        let rest = StreamReader {
            handle: tokio::runtime::Handle::current(),
            stream,
            current: Bytes::new(),
        };
        tokio::task::spawn_blocking(move || {
            let raw = io::BufReader::with_capacity(256 * 1024, io::Cursor::new(head).chain(rest));
            this.decode_to_file(raw).map(Some)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn put(&self, key: &str, body: Body) -> io::Result<()> {
        let name = digest(key);
        let mutable = Self::mutable(key)?;
        let spool = self.spool.clone();
        let (upload, _temp) = tokio::task::spawn_blocking(move || encode(&body, &spool))
            .await
            .map_err(io::Error::other)??;
        if mutable {
            let Upload::Bytes(bytes) = upload else {
                return Err(io::Error::other(format!(
                    "{key}: an answer that changes may have at most {MAX_MANIFEST} bytes"
                )));
            };
            return self
                .store
                .put_manifest(&BuildKey(name), bytes)
                .await
                .map_err(io::Error::other);
        }
        self.store
            .put(&ActionId(name), upload)
            .await
            .map(drop)
            .map_err(io::Error::other)
    }
}

/// `body` in the entry format: in memory up to [`IN_MEMORY_MAX`], else in a temporary file in
/// `spool` (returned too, so that it lives until the upload is done).
fn encode(body: &Body, spool: &Path) -> io::Result<(Upload, Option<tempfile::NamedTempFile>)> {
    let header = header_for(body)?;
    let mut input = io::BufReader::with_capacity(256 * 1024, body.file.reopen()?);
    if body.len <= IN_MEMORY_MAX {
        let mut out = Vec::with_capacity(format::HEADER_LEN + body.len as usize);
        format::write_entry(&header, &mut input, &mut out)?;
        return Ok((Upload::Bytes(Bytes::from(out)), None));
    }
    let mut temp = tempfile::Builder::new()
        .prefix(".encode-")
        .tempfile_in(spool)?;
    let len = format::write_entry(&header, &mut input, &mut BufWriter::new(temp.as_file_mut()))?;
    Ok((
        Upload::File {
            path: temp.path().to_path_buf(),
            len,
        },
        Some(temp),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goproxy::cache::ModStore;
    use crate::store::memory::MemoryStore;

    use crate::goproxy::testserver::{body, read};

    #[tokio::test]
    async fn answers_round_trip_and_those_that_change_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(MemoryStore::new());
        let store = EntryModStore::new(memory.clone(), dir.path(), 1 << 30);
        let zip = "example.com/m/@v/v1.0.0.zip";
        let list = "example.com/m/@v/list";
        assert!(store.get(zip).await.unwrap().is_none());
        let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        store.put(zip, body(dir.path(), &big)).await.unwrap();
        store
            .put(list, body(dir.path(), b"v1.0.0\n"))
            .await
            .unwrap();
        store
            .put(list, body(dir.path(), b"v1.0.0\nv1.1.0\n"))
            .await
            .unwrap();
        assert_eq!(read(store.get(zip).await.unwrap().unwrap()), big);
        let stored = store.get(list).await.unwrap().unwrap();
        assert!(stored.modified <= SystemTime::now());
        assert_eq!(read(stored), b"v1.0.0\nv1.1.0\n");
        // The zip is an entry, the list a manifest, under hashed names.
        assert!(memory.entry(&ActionId(digest(zip))).is_some());
        assert!(memory.entry(&ActionId(digest(list))).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_answer_streamed_in_many_chunks_is_decoded_whole_into_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::store::dir::DiskStore::open(dir.path()).unwrap();
        let spool = dir.path().join("tmp");
        let store = EntryModStore::new(Arc::new(disk), &spool, 1 << 30);
        let zip = "example.com/m/@v/v1.0.0.zip";
        // Over a MiB, so not held in memory; the directory store streams it in 256 KiB pieces.
        // Incompressible, as a zip is (a compressible body is stored compressed, and small).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let big: Vec<u8> = (0..5 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        store.put(zip, body(&spool, &big)).await.unwrap();
        let stored = store.get(zip).await.unwrap().unwrap();
        assert!(matches!(stored.body, Answer::File(_)));
        assert_eq!(read(stored), big);
        let info = "example.com/m/@v/v1.0.0.info";
        store.put(info, body(&spool, b"{}")).await.unwrap();
        let stored = store.get(info).await.unwrap().unwrap();
        assert!(matches!(stored.body, Answer::Bytes(_)));
        assert_eq!(read(stored), b"{}");
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_damaged_object_is_an_error_and_anything_but_a_storage_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(MemoryStore::new());
        let store = EntryModStore::new(memory.clone(), dir.path(), 1 << 30);
        let info = "example.com/m/@v/v1.0.0.info";
        let mut entry = format::encode_for_test(b"{\"Version\":\"v1.0.0\"}");
        let last = entry.len() - 1;
        entry[last] ^= 1;
        memory
            .put(&ActionId(digest(info)), Upload::Bytes(entry.into()))
            .await
            .unwrap();
        let err = store.get(info).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        for key in ["../x", "example.com/M/@v/list", "/example.com/m/@v/list"] {
            let err = store.get(key).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{key}");
        }
        // The spool holds nothing once the answers are dropped.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
