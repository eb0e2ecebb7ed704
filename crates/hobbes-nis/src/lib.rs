//! The Node Information Service (NIS): typed, versioned records in LMDB.
//!
//! Layout of one environment (a directory holding `data.mdb` and `lock.mdb`):
//!
//! | database  | key              | value                 |
//! |-----------|------------------|-----------------------|
//! | `header`  | `"header"`       | [`NisHeader`] (JSON)   |
//! | `cores`   | core id (u32 BE) | [`CoreRecord`]        |
//! | `memory`  | block id (u32 BE)| [`MemBlockRecord`]    |
//! | `enclaves`| id (u64 BE)      | [`EnclaveRecord`]     |
//! | `apps`    | id (u64 BE)      | [`AppRecord`]         |
//! | `procs`   | global pid (u32 BE) | [`ProcRecord`]     |
//!
//! The daemon is the only writer ([`NisWriter`]); everyone else reads
//! ([`NisReader`]) directly, without IPC.

#![deny(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use heed::byteorder::BE;
use heed::types::{SerdeJson, Str, I64, U32, U64};
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

pub use hobbes_proto::model::*;

/// LMDB map size: records are small; this bounds the files, not memory use.
const MAP_SIZE: usize = 256 << 20;
/// Readers: every process and thread with a read transaction open.
const MAX_READERS: u32 = 1024;
const HEADER_KEY: &str = "header";

/// Why opening or reading or writing a NIS failed. Each variant carries the
/// environment's directory (or the file) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum NisError {
    /// Opening for reading found no `data.mdb` in the directory, or one of
    /// the databases is absent: no daemon has created this NIS (the path is
    /// the directory, or the missing database under it).
    #[error("no Node Information Service at {0}: is leviathan running? (set HOBBES_STATE_DIR or start `leviathan`)")]
    Missing(PathBuf),
    /// LMDB itself failed: opening the environment, a transaction, a
    /// read or write, or decoding a record's JSON.
    #[error("NIS at {path}: {source}")]
    Lmdb {
        /// The environment's directory.
        path: PathBuf,
        /// LMDB's (heed's) error.
        source: heed::Error,
    },
    /// The header's schema version is outside [`OLDEST_READABLE_SCHEMA_VERSION`]..=[`SCHEMA_VERSION`]: the daemon and
    /// this reader are different builds; [`NisReader::open`] refuses it.
    #[error("NIS at {path} has schema version {found}, this build reads versions {OLDEST_READABLE_SCHEMA_VERSION} to {SCHEMA_VERSION}")]
    Schema {
        /// The environment's directory.
        path: PathBuf,
        /// The schema version the header holds.
        found: u32,
    },
    /// The environment exists but the daemon has not written its header
    /// yet (it is still starting); try again shortly.
    #[error("NIS at {0} has no header yet (daemon still starting)")]
    NoHeader(PathBuf),
    /// Creating the directory or setting a file's permissions failed (when
    /// the writer opens the environment).
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The result of every NIS operation.
pub type Result<T> = std::result::Result<T, NisError>;

type Env0 = Env<WithoutTls>;

#[derive(Clone, Copy)]
struct Tables {
    header: Database<Str, SerdeJson<NisHeader>>,
    cores: Database<U32<BE>, SerdeJson<CoreRecord>>,
    memory: Database<U32<BE>, SerdeJson<MemBlockRecord>>,
    enclaves: Database<U64<BE>, SerdeJson<EnclaveRecord>>,
    apps: Database<U64<BE>, SerdeJson<AppRecord>>,
    procs: Database<U32<BE>, SerdeJson<ProcRecord>>,
    segments: Database<I64<BE>, SerdeJson<SegmentRecord>>,
    /// Name index of `segments`.
    segnames: Database<Str, I64<BE>>,
    jobs: Database<U64<BE>, SerdeJson<JobRecord>>,
    /// Remora's PMI key/value spaces: "<kvsname> <key>" -> value.
    pmi: Database<Str, Str>,
}

/// LMDB allows one `Env` per path per process; share it.
fn env_cache() -> &'static Mutex<HashMap<PathBuf, (Env0, Tables)>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, (Env0, Tables)>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn lmdb(path: &Path) -> impl Fn(heed::Error) -> NisError + '_ {
    move |source| NisError::Lmdb {
        path: path.to_path_buf(),
        source,
    }
}

fn open_env(dir: &Path, create: bool) -> Result<(Env0, Tables)> {
    let key = dir.to_path_buf();
    let mut cache = env_cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = cache.get(&key) {
        return Ok(found.clone());
    }
    if create {
        std::fs::create_dir_all(dir).map_err(|source| NisError::Io {
            path: key.clone(),
            source,
        })?;
    } else if !dir.join("data.mdb").exists() {
        return Err(NisError::Missing(key));
    }
    let mut opts = EnvOpenOptions::new().read_txn_without_tls();
    opts.map_size(MAP_SIZE).max_readers(MAX_READERS).max_dbs(16);
    if create {
        // The NIS lives on tmpfs and is rebuilt from what runs after a reboot:
        // no fsync. A crash of the daemon loses nothing (the page cache has it).
        // SAFETY: NO_SYNC/NO_META_SYNC trade only system-crash durability.
        unsafe { opts.flags(heed::EnvFlags::NO_SYNC | heed::EnvFlags::NO_META_SYNC) };
    } else {
        // Readers only need read access to data.mdb (and write access to the
        // lock file's reader table), so any uid can read the NIS.
        // SAFETY: READ_ONLY only restricts what this handle may do.
        unsafe { opts.flags(heed::EnvFlags::READ_ONLY) };
    }
    // SAFETY: heed requires that the environment is not opened twice in this
    // process (guarded by the cache above) and that its files are not modified
    // other than through LMDB (they live in the daemon's private state directory).
    let env = unsafe { opts.open(dir) }.map_err(lmdb(dir))?;
    // One place lists the databases; `open!` says how each is reached.
    macro_rules! tables {
        ($open:ident) => {
            Tables {
                header: $open!("header"),
                cores: $open!("cores"),
                memory: $open!("memory"),
                enclaves: $open!("enclaves"),
                apps: $open!("apps"),
                procs: $open!("procs"),
                segments: $open!("segments"),
                segnames: $open!("segnames"),
                jobs: $open!("jobs"),
                pmi: $open!("pmi"),
            }
        };
    }
    let tables = if create {
        let mut wtxn = env.write_txn().map_err(lmdb(dir))?;
        macro_rules! create_db {
            ($name:literal) => {
                env.create_database(&mut wtxn, Some($name))
                    .map_err(lmdb(dir))?
            };
        }
        let t = tables!(create_db);
        wtxn.commit().map_err(lmdb(dir))?;
        // Non-root clients read directly: LMDB readers must write their slot in
        // the lock file. Records hold nothing secret.
        set_mode(&dir.join("data.mdb"), 0o644)?;
        set_mode(&dir.join("lock.mdb"), 0o666)?;
        set_mode(dir, 0o755)?;
        t
    } else {
        let rtxn = env.read_txn().map_err(lmdb(dir))?;
        macro_rules! open_db {
            ($name:literal) => {
                env.open_database(&rtxn, Some($name))
                    .map_err(lmdb(dir))?
                    .ok_or_else(|| NisError::Missing(dir.join($name)))?
            };
        }
        let t = tables!(open_db);
        rtxn.commit().map_err(lmdb(dir))?;
        t
    };
    cache.insert(key, (env.clone(), tables));
    Ok((env, tables))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        NisError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Direct, IPC-free read access to a NIS environment.
#[derive(Clone)]
pub struct NisReader {
    dir: PathBuf,
    env: Env0,
    t: Tables,
}

/// Everything in the NIS at one instant (one read transaction).
/// Jobs and PMI values are not part of it. Each list is in key order
/// (ascending id).
#[derive(Debug, Clone)]
pub struct NisSnapshot {
    /// The node and daemon description (schema, hostname, generation).
    pub header: NisHeader,
    /// Every core the daemon manages, with its owner.
    pub cores: Vec<CoreRecord>,
    /// Every memory block the daemon manages, with its owner.
    pub memory: Vec<MemBlockRecord>,
    /// Every enclave, enclave 0 (the host) included.
    pub enclaves: Vec<EnclaveRecord>,
    /// Every application launched and not yet forgotten.
    pub apps: Vec<AppRecord>,
    /// The global process map: one record per process the daemon tracks,
    /// by host pid.
    pub procs: Vec<ProcRecord>,
    /// Every XEMEM segment exported on the node.
    pub segments: Vec<SegmentRecord>,
}

impl NisReader {
    /// Open an existing NIS (the daemon's `<state>/nis`, or an enclave's replica).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let (env, t) = open_env(&dir, false)?;
        let reader = NisReader { dir, env, t };
        if let Some(h) = reader.header_opt()? {
            if !(OLDEST_READABLE_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&h.schema_version) {
                return Err(NisError::Schema {
                    path: reader.dir.clone(),
                    found: h.schema_version,
                });
            }
        }
        Ok(reader)
    }

    /// The environment's directory, as opened.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn rtxn(&self) -> Result<RoTxn<'_, WithoutTls>> {
        self.env.read_txn().map_err(lmdb(&self.dir))
    }

    fn header_opt(&self) -> Result<Option<NisHeader>> {
        let r = self.rtxn()?;
        self.t.header.get(&r, HEADER_KEY).map_err(lmdb(&self.dir))
    }

    /// The node and daemon description. `NoHeader` while the daemon is
    /// still starting and has not written it.
    pub fn header(&self) -> Result<NisHeader> {
        self.header_opt()?
            .ok_or_else(|| NisError::NoHeader(self.dir.clone()))
    }

    /// Enclave `id`'s record; `None` when there is no such enclave (never
    /// created, or destroyed).
    pub fn enclave(&self, id: EnclaveId) -> Result<Option<EnclaveRecord>> {
        let r = self.rtxn()?;
        self.t.enclaves.get(&r, &id).map_err(lmdb(&self.dir))
    }

    /// The enclave named `name` (names are unique on the node); `None` when
    /// there is none. Reads every enclave record.
    pub fn enclave_by_name(&self, name: &str) -> Result<Option<EnclaveRecord>> {
        Ok(self.enclaves()?.into_iter().find(|e| e.name == name))
    }

    /// Every enclave, enclave 0 (the host) included, by ascending id.
    pub fn enclaves(&self) -> Result<Vec<EnclaveRecord>> {
        let r = self.rtxn()?;
        collect(self.t.enclaves.iter(&r), &self.dir)
    }

    /// App `id`'s record; `None` when there is no such app (never launched,
    /// or forgotten after it exited).
    pub fn app(&self, id: AppId) -> Result<Option<AppRecord>> {
        let r = self.rtxn()?;
        self.t.apps.get(&r, &id).map_err(lmdb(&self.dir))
    }

    /// Every app the NIS still records, running or exited, by ascending id.
    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        let r = self.rtxn()?;
        collect(self.t.apps.iter(&r), &self.dir)
    }

    /// Every core the daemon manages, with its owner, by ascending core id.
    pub fn cores(&self) -> Result<Vec<CoreRecord>> {
        let r = self.rtxn()?;
        collect(self.t.cores.iter(&r), &self.dir)
    }

    /// Every memory block the daemon manages, with its owner, by ascending
    /// block id.
    pub fn memory(&self) -> Result<Vec<MemBlockRecord>> {
        let r = self.rtxn()?;
        collect(self.t.memory.iter(&r), &self.dir)
    }

    /// Global process map: who is host pid `global_pid`?
    pub fn proc_by_global(&self, global_pid: u32) -> Result<Option<ProcRecord>> {
        let r = self.rtxn()?;
        self.t.procs.get(&r, &global_pid).map_err(lmdb(&self.dir))
    }

    /// Global process map, the other way: (enclave, local pid) -> record.
    pub fn proc_by_local(&self, enclave: EnclaveId, local_pid: u32) -> Result<Option<ProcRecord>> {
        let r = self.rtxn()?;
        for item in self.t.procs.iter(&r).map_err(lmdb(&self.dir))? {
            let (_, p) = item.map_err(lmdb(&self.dir))?;
            if p.enclave == enclave && p.local_pid == local_pid {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// Segment `segid`'s record; `None` when no such segment is exported.
    pub fn segment(&self, segid: SegId) -> Result<Option<SegmentRecord>> {
        let r = self.rtxn()?;
        self.t.segments.get(&r, &segid).map_err(lmdb(&self.dir))
    }

    /// Name server lookup, read directly.
    pub fn segment_by_name(&self, name: &str) -> Result<Option<SegmentRecord>> {
        let r = self.rtxn()?;
        let Some(segid) = self.t.segnames.get(&r, name).map_err(lmdb(&self.dir))? else {
            return Ok(None);
        };
        self.t.segments.get(&r, &segid).map_err(lmdb(&self.dir))
    }

    /// Every XEMEM segment exported on the node, by ascending segid.
    pub fn segments(&self) -> Result<Vec<SegmentRecord>> {
        let r = self.rtxn()?;
        collect(self.t.segments.iter(&r), &self.dir)
    }

    /// Every Remora job the NIS records, by ascending job id.
    pub fn jobs(&self) -> Result<Vec<JobRecord>> {
        let r = self.rtxn()?;
        collect(self.t.jobs.iter(&r), &self.dir)
    }

    /// Remora job `id`'s record; `None` when there is no such job.
    pub fn job(&self, id: u64) -> Result<Option<JobRecord>> {
        let r = self.rtxn()?;
        self.t.jobs.get(&r, &id).map_err(lmdb(&self.dir))
    }

    /// A PMI value of job `kvsname`, read directly.
    pub fn pmi_get(&self, kvsname: &str, key: &str) -> Result<Option<String>> {
        let r = self.rtxn()?;
        Ok(self
            .t
            .pmi
            .get(&r, &format!("{kvsname} {key}"))
            .map_err(lmdb(&self.dir))?
            .map(str::to_string))
    }

    /// All records from one consistent read transaction.
    pub fn snapshot(&self) -> Result<NisSnapshot> {
        let r = self.rtxn()?;
        let d = &self.dir;
        Ok(NisSnapshot {
            header: self
                .t
                .header
                .get(&r, HEADER_KEY)
                .map_err(lmdb(d))?
                .ok_or_else(|| NisError::NoHeader(d.clone()))?,
            cores: collect(self.t.cores.iter(&r), d)?,
            memory: collect(self.t.memory.iter(&r), d)?,
            enclaves: collect(self.t.enclaves.iter(&r), d)?,
            apps: collect(self.t.apps.iter(&r), d)?,
            procs: collect(self.t.procs.iter(&r), d)?,
            segments: collect(self.t.segments.iter(&r), d)?,
        })
    }

    /// Keep a read transaction open for `d` (diagnostics: shows how a reader
    /// that stalls or dies mid-transaction affects the writer).
    pub fn hold_read_txn(&self, d: std::time::Duration) -> Result<()> {
        let _r = self.rtxn()?;
        std::thread::sleep(d);
        Ok(())
    }

    /// Remove reader slots of dead processes (LMDB `mdb_reader_check`).
    pub fn clear_stale_readers(&self) -> Result<usize> {
        self.env.clear_stale_readers().map_err(lmdb(&self.dir))
    }
}

fn collect<'t, K, V>(
    iter: heed::Result<heed::RoIter<'t, K, SerdeJson<V>>>,
    dir: &Path,
) -> Result<Vec<V>>
where
    K: heed::BytesDecode<'t> + 't,
    V: serde::de::DeserializeOwned + 't,
{
    let mut out = Vec::new();
    for item in iter.map_err(lmdb(dir))? {
        out.push(item.map_err(lmdb(dir))?.1);
    }
    Ok(out)
}

/// One change, replayed on every replica after the primary commits.
#[derive(Debug, Clone)]
enum Op {
    Header(NisHeader),
    Core(CoreRecord),
    Block(MemBlockRecord),
    Enclave(Box<EnclaveRecord>),
    DelEnclave(EnclaveId),
    App(AppRecord),
    DelApp(AppId),
    Proc(ProcRecord),
    DelProc(u32),
    Segment(SegmentRecord),
    DelSegment(SegId, Option<String>),
    Job(JobRecord),
    Pmi(String, String),
    DelKvs(String),
}

/// A write batch. Records' `rev` fields are bumped by the `put_*` calls.
pub struct NisTxn<'a> {
    reader: &'a NisReader,
    wtxn: RwTxn<'a>,
    ops: Vec<Op>,
}

impl NisTxn<'_> {
    fn e(&self) -> impl Fn(heed::Error) -> NisError + '_ {
        lmdb(&self.reader.dir)
    }

    /// The header as this batch sees it (its own writes included); `None`
    /// before the daemon's first write.
    pub fn header(&self) -> Result<Option<NisHeader>> {
        self.reader
            .t
            .header
            .get(&self.wtxn, HEADER_KEY)
            .map_err(self.e())
    }
    /// Enclave `id` as this batch sees it; `None` when absent.
    pub fn enclave(&self, id: EnclaveId) -> Result<Option<EnclaveRecord>> {
        self.reader
            .t
            .enclaves
            .get(&self.wtxn, &id)
            .map_err(self.e())
    }
    /// App `id` as this batch sees it; `None` when absent.
    pub fn app(&self, id: AppId) -> Result<Option<AppRecord>> {
        self.reader.t.apps.get(&self.wtxn, &id).map_err(self.e())
    }
    /// Every core record as this batch sees it, by ascending id.
    pub fn cores(&self) -> Result<Vec<CoreRecord>> {
        collect(self.reader.t.cores.iter(&self.wtxn), &self.reader.dir)
    }
    /// Every memory block record as this batch sees it, by ascending id.
    pub fn blocks(&self) -> Result<Vec<MemBlockRecord>> {
        collect(self.reader.t.memory.iter(&self.wtxn), &self.reader.dir)
    }
    /// Every enclave record as this batch sees it, by ascending id.
    pub fn enclaves(&self) -> Result<Vec<EnclaveRecord>> {
        collect(self.reader.t.enclaves.iter(&self.wtxn), &self.reader.dir)
    }
    /// Every app record as this batch sees it, by ascending id.
    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        collect(self.reader.t.apps.iter(&self.wtxn), &self.reader.dir)
    }
    /// Every global process map entry as this batch sees it, by host pid.
    pub fn procs(&self) -> Result<Vec<ProcRecord>> {
        collect(self.reader.t.procs.iter(&self.wtxn), &self.reader.dir)
    }

    /// Write the header (it has no `rev`: the caller keeps `updated_ms`).
    pub fn put_header(&mut self, h: &NisHeader) -> Result<()> {
        let t = self.reader.t;
        t.header
            .put(&mut self.wtxn, HEADER_KEY, h)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::Header(h.clone()));
        Ok(())
    }
    /// Add or replace core `c.id`; bumps `c.rev` first, so the caller's copy
    /// matches what is stored.
    pub fn put_core(&mut self, c: &mut CoreRecord) -> Result<()> {
        c.rev += 1;
        let t = self.reader.t;
        t.cores
            .put(&mut self.wtxn, &c.id, c)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::Core(c.clone()));
        Ok(())
    }
    /// Add or replace memory block `b.id`; bumps `b.rev` first.
    pub fn put_block(&mut self, b: &mut MemBlockRecord) -> Result<()> {
        b.rev += 1;
        let t = self.reader.t;
        t.memory
            .put(&mut self.wtxn, &b.id, b)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::Block(b.clone()));
        Ok(())
    }
    /// Add or replace enclave `e.id`; bumps `e.rev` first.
    pub fn put_enclave(&mut self, e: &mut EnclaveRecord) -> Result<()> {
        e.rev += 1;
        let t = self.reader.t;
        t.enclaves
            .put(&mut self.wtxn, &e.id, e)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::Enclave(Box::new(e.clone())));
        Ok(())
    }
    /// Remove enclave `id`'s record (absent is not an error). Its cores,
    /// blocks, apps and processes are the caller's to release or remove.
    pub fn delete_enclave(&mut self, id: EnclaveId) -> Result<()> {
        let t = self.reader.t;
        t.enclaves
            .delete(&mut self.wtxn, &id)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::DelEnclave(id));
        Ok(())
    }
    /// Add or replace app `a.id`; bumps `a.rev` first.
    pub fn put_app(&mut self, a: &mut AppRecord) -> Result<()> {
        a.rev += 1;
        let t = self.reader.t;
        t.apps
            .put(&mut self.wtxn, &a.id, a)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::App(a.clone()));
        Ok(())
    }
    /// Remove app `id`'s record (absent is not an error); its processes' map
    /// entries are the caller's to remove.
    pub fn delete_app(&mut self, id: AppId) -> Result<()> {
        let t = self.reader.t;
        t.apps
            .delete(&mut self.wtxn, &id)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::DelApp(id));
        Ok(())
    }
    /// Add or replace the global process map entry for host pid
    /// `p.global_pid` (these records have no `rev`).
    pub fn put_proc(&mut self, p: &ProcRecord) -> Result<()> {
        let t = self.reader.t;
        t.procs
            .put(&mut self.wtxn, &p.global_pid, p)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::Proc(*p));
        Ok(())
    }
    /// Segment `segid` as this batch sees it; `None` when absent.
    pub fn segment(&self, segid: SegId) -> Result<Option<SegmentRecord>> {
        self.reader
            .t
            .segments
            .get(&self.wtxn, &segid)
            .map_err(self.e())
    }
    /// The segid named `name`, from the name index, as this batch sees it;
    /// `None` when the name is free.
    pub fn segment_by_name(&self, name: &str) -> Result<Option<SegId>> {
        self.reader
            .t
            .segnames
            .get(&self.wtxn, name)
            .map_err(self.e())
    }
    /// Every segment record as this batch sees it, by ascending segid.
    pub fn segments(&self) -> Result<Vec<SegmentRecord>> {
        collect(self.reader.t.segments.iter(&self.wtxn), &self.reader.dir)
    }
    /// Add or update a segment (and its name index).
    pub fn put_segment(&mut self, seg: &mut SegmentRecord) -> Result<()> {
        seg.rev += 1;
        let op = Op::Segment(seg.clone());
        apply(&self.reader.t, &mut self.wtxn, &op).map_err(lmdb(&self.reader.dir))?;
        self.ops.push(op);
        Ok(())
    }
    /// Remove segment `segid` and its name from the index (absent is not an
    /// error).
    pub fn delete_segment(&mut self, segid: SegId) -> Result<()> {
        let name = self.segment(segid)?.and_then(|s| s.name);
        let op = Op::DelSegment(segid, name);
        apply(&self.reader.t, &mut self.wtxn, &op).map_err(lmdb(&self.reader.dir))?;
        self.ops.push(op);
        Ok(())
    }
    /// Remora job `id` as this batch sees it; `None` when absent.
    pub fn job(&self, id: u64) -> Result<Option<JobRecord>> {
        self.reader.t.jobs.get(&self.wtxn, &id).map_err(self.e())
    }
    /// Add or replace job `job.id`; bumps `job.rev` first.
    pub fn put_job(&mut self, job: &mut JobRecord) -> Result<()> {
        job.rev += 1;
        self.push(Op::Job(job.clone()))
    }
    /// Record a PMI key/value of job `kvsname`.
    pub fn put_pmi(&mut self, kvsname: &str, key: &str, value: &str) -> Result<()> {
        self.push(Op::Pmi(format!("{kvsname} {key}"), value.to_string()))
    }
    /// Forget a finished job's key/value space.
    pub fn delete_kvs(&mut self, kvsname: &str) -> Result<()> {
        self.push(Op::DelKvs(kvsname.to_string()))
    }
    fn push(&mut self, op: Op) -> Result<()> {
        apply(&self.reader.t, &mut self.wtxn, &op).map_err(lmdb(&self.reader.dir))?;
        self.ops.push(op);
        Ok(())
    }
    /// Remove the global process map entry for host pid `global_pid`
    /// (absent is not an error).
    pub fn delete_proc(&mut self, global_pid: u32) -> Result<()> {
        let t = self.reader.t;
        t.procs
            .delete(&mut self.wtxn, &global_pid)
            .map_err(lmdb(&self.reader.dir))?;
        self.ops.push(Op::DelProc(global_pid));
        Ok(())
    }
}

fn apply(t: &Tables, w: &mut RwTxn, op: &Op) -> heed::Result<()> {
    match op {
        Op::Header(h) => t.header.put(w, HEADER_KEY, h),
        Op::Core(c) => t.cores.put(w, &c.id, c),
        Op::Block(b) => t.memory.put(w, &b.id, b),
        Op::Enclave(e) => t.enclaves.put(w, &e.id, e),
        Op::DelEnclave(id) => t.enclaves.delete(w, id).map(|_| ()),
        Op::App(a) => t.apps.put(w, &a.id, a),
        Op::DelApp(id) => t.apps.delete(w, id).map(|_| ()),
        Op::Proc(p) => t.procs.put(w, &p.global_pid, p),
        Op::DelProc(pid) => t.procs.delete(w, pid).map(|_| ()),
        Op::Segment(seg) => {
            if let Some(name) = &seg.name {
                t.segnames.put(w, name, &seg.segid)?;
            }
            t.segments.put(w, &seg.segid, seg)
        }
        Op::Job(j) => t.jobs.put(w, &j.id, j),
        Op::Pmi(k, v) => t.pmi.put(w, k, v),
        Op::DelKvs(kvsname) => {
            let prefix = format!("{kvsname} ");
            let keys = t
                .pmi
                .prefix_iter(w, &prefix)?
                .map(|item| item.map(|(k, _)| k.to_string()))
                .collect::<heed::Result<Vec<String>>>()?;
            for k in keys {
                t.pmi.delete(w, &k)?;
            }
            Ok(())
        }
        Op::DelSegment(segid, name) => {
            if let Some(name) = name {
                t.segnames.delete(w, name)?;
            }
            t.segments.delete(w, segid).map(|_| ())
        }
    }
}

/// The daemon's handle: the primary environment plus one replica per enclave
/// that has its own PID namespace.
pub struct NisWriter {
    primary: NisReader,
    replicas: Mutex<HashMap<EnclaveId, NisReader>>,
}

impl NisWriter {
    /// Create or open the primary environment in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let (env, t) = open_env(&dir, true)?;
        Ok(NisWriter {
            primary: NisReader { dir, env, t },
            replicas: Mutex::new(HashMap::new()),
        })
    }

    /// A reader of the primary environment, for the daemon's own reads
    /// outside a batch.
    pub fn reader(&self) -> &NisReader {
        &self.primary
    }

    /// Apply a batch atomically to the primary, then to every replica. If `f`
    /// fails, nothing is written (the caller's error type may carry a refusal).
    pub fn update<T, E: From<NisError>>(
        &self,
        f: impl FnOnce(&mut NisTxn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let wtxn = self
            .primary
            .env
            .write_txn()
            .map_err(lmdb(&self.primary.dir))?;
        let mut txn = NisTxn {
            reader: &self.primary,
            wtxn,
            ops: Vec::new(),
        };
        let out = f(&mut txn)?;
        let NisTxn { wtxn, ops, .. } = txn;
        wtxn.commit().map_err(lmdb(&self.primary.dir))?;
        if !ops.is_empty() {
            let replicas = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
            for replica in replicas.values() {
                // A failing replica must not fail the primary's (committed) change;
                // it is rebuilt from the primary when it is next attached.
                let _ = replay(replica, &ops);
            }
        }
        Ok(out)
    }

    /// Create (or rebuild) the replica read by enclave `id`, in `dir`,
    /// as a full copy of the primary.
    pub fn attach_replica(&self, id: EnclaveId, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref().to_path_buf();
        let (env, t) = open_env(&dir, true)?;
        let replica = NisReader {
            dir: dir.clone(),
            env,
            t,
        };
        let snap = self.primary.snapshot()?;
        // Built entirely inside write transactions: the daemon never takes a
        // read slot in a replica (its host pid could collide with an enclave pid).
        let mut w = replica.env.write_txn().map_err(lmdb(&dir))?;
        let e = lmdb(&dir);
        t.cores.clear(&mut w).map_err(&e)?;
        t.memory.clear(&mut w).map_err(&e)?;
        t.enclaves.clear(&mut w).map_err(&e)?;
        t.apps.clear(&mut w).map_err(&e)?;
        t.procs.clear(&mut w).map_err(&e)?;
        t.segments.clear(&mut w).map_err(&e)?;
        t.segnames.clear(&mut w).map_err(&e)?;
        let mut ops = vec![Op::Header(snap.header)];
        ops.extend(snap.cores.into_iter().map(Op::Core));
        ops.extend(snap.memory.into_iter().map(Op::Block));
        ops.extend(snap.enclaves.into_iter().map(|e| Op::Enclave(Box::new(e))));
        ops.extend(snap.apps.into_iter().map(Op::App));
        ops.extend(snap.procs.into_iter().map(Op::Proc));
        ops.extend(snap.segments.into_iter().map(Op::Segment));
        for op in &ops {
            apply(&t, &mut w, op).map_err(&e)?;
        }
        w.commit().map_err(&e)?;
        drop(e);
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, replica);
        Ok(dir)
    }

    /// Stop updating enclave `id`'s replica (its files are removed by the caller).
    pub fn detach_replica(&self, id: EnclaveId) {
        let removed = self
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(r) = removed {
            env_cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&r.dir);
        }
    }

    /// Clear stale reader slots in the primary and every replica. Returns how many.
    pub fn clear_stale_readers(&self) -> usize {
        let mut n = self.primary.clear_stale_readers().unwrap_or(0);
        for r in self
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            n += r.clear_stale_readers().unwrap_or(0);
        }
        n
    }
}

fn replay(replica: &NisReader, ops: &[Op]) -> Result<()> {
    let mut w = replica.env.write_txn().map_err(lmdb(&replica.dir))?;
    for op in ops {
        apply(&replica.t, &mut w, op).map_err(lmdb(&replica.dir))?;
    }
    w.commit().map_err(lmdb(&replica.dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> NisHeader {
        NisHeader {
            schema_version: SCHEMA_VERSION,
            hostname: "n".into(),
            daemon_pid: 1,
            generation: 1,
            started_ms: 0,
            updated_ms: 0,
            cgroup_mode: CgroupMode::None,
            privileged: false,
            socket: "/x".into(),
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 300,
            counters: Counters::default(),
            segment_files: Default::default(),
            vm_support: None,
        }
    }

    fn core(id: CoreId) -> CoreRecord {
        CoreRecord {
            id,
            numa_node: 0,
            package: 0,
            core: id,
            ownership: Ownership::Free,
            shared_by: vec![],
            rev: 0,
        }
    }

    #[test]
    fn writes_are_visible_to_readers_and_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let w = NisWriter::open(dir.path().join("nis")).unwrap();
        w.update(|t| -> Result<()> {
            t.put_header(&header())?;
            t.put_core(&mut core(0))
        })
        .unwrap();
        let replica_dir = w.attach_replica(7, dir.path().join("r7")).unwrap();
        w.update(|t| -> Result<()> { t.put_core(&mut core(1)) })
            .unwrap();

        let r = NisReader::open(dir.path().join("nis")).unwrap();
        assert_eq!(r.cores().unwrap().len(), 2);
        assert_eq!(r.cores().unwrap()[0].rev, 1);
        let rep = NisReader::open(&replica_dir).unwrap();
        assert_eq!(
            rep.cores().unwrap().len(),
            2,
            "replica got the later write too"
        );
        assert_eq!(rep.header().unwrap().hostname, "n");
    }

    #[test]
    fn failed_batch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let w = NisWriter::open(dir.path()).unwrap();
        let res: Result<()> = w.update(|t| -> Result<()> {
            t.put_core(&mut core(0))?;
            Err(NisError::NoHeader(PathBuf::from("forced")))
        });
        assert!(res.is_err());
        assert!(w.reader().cores().unwrap().is_empty());
    }

    #[test]
    fn segments_are_found_by_name_and_forgotten_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let w = NisWriter::open(dir.path()).unwrap();
        let mut seg = SegmentRecord {
            segid: 42,
            name: Some("field".into()),
            size: 4096,
            page_kind: PageKind::Base,
            mode: 0o600,
            owner_uid: 0,
            owner_gid: 0,
            owner_enclave: 1,
            owner_app: None,
            owner_pid: 1234,
            owner_start_time: None,
            owner_fd: 5,
            owner_event_fd: None,
            owner_addr: 0x1000,
            backing_inode: 7,
            backing_offset: 0,
            signalled: false,
            created_ms: 0,
            rev: 0,
            composite: None,
        };
        w.update(|t| -> Result<()> { t.put_segment(&mut seg) })
            .unwrap();
        let r = w.reader();
        assert_eq!(r.segment_by_name("field").unwrap().unwrap().segid, 42);
        assert_eq!(r.segment(42).unwrap().unwrap().rev, 1);
        w.update(|t| -> Result<()> { t.delete_segment(42) })
            .unwrap();
        assert!(r.segment_by_name("field").unwrap().is_none());
        assert!(r.segments().unwrap().is_empty());
    }

    /// A NIS from before an upgrade still opens (it is adopted and cleaned
    /// up); one from a newer build is refused with both versions named.
    #[test]
    fn older_schemas_open_newer_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = NisWriter::open(dir.path()).unwrap();
        for (version, opens) in [
            (OLDEST_READABLE_SCHEMA_VERSION, true),
            (SCHEMA_VERSION, true),
            (SCHEMA_VERSION + 1, false),
        ] {
            let mut h = header();
            h.schema_version = version;
            w.update(|t| t.put_header(&h)).unwrap();
            match NisReader::open(dir.path()) {
                Ok(_) => assert!(opens, "version {version} opened"),
                Err(e) => {
                    assert!(!opens, "version {version}: {e}");
                    assert!(e.to_string().contains(&format!("schema version {version}")));
                }
            }
        }
    }

    #[test]
    fn missing_nis_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = NisReader::open(dir.path().join("none")).err().unwrap();
        assert!(err.to_string().contains("is leviathan running"), "{err}");
    }
}
