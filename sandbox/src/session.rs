//! Sessions: a Python interpreter kept alive between executions of one owner, so variables,
//! imports and files in `/tmp` carry over (what OpenAI's code interpreter and E2B's kernels
//! offer). An execution without a session is untouched by any of this: a fresh instance,
//! never reused.
//!
//! A session lives in the memory of the sandbox replica that made it: its id starts with that
//! replica's tag, and another replica (or this one after a restart) answers "not found" rather
//! than silently starting from nothing. Bounds: idle expiry, a cap per owner, and one memory
//! budget for all sessions (least recently used evicted first). A session whose execution hit a
//! limit or trapped (timeout, fuel, memory, disk, crash) is ended: its interpreter stopped
//! mid-instruction and cannot be trusted; so is one whose caller vanished mid-execution.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::python::Live;
use crate::SandboxError;

/// The session table of one sandbox replica.
pub(crate) struct Sessions {
    /// This replica's tag, the first part of every session id it makes.
    replica: String,
    table: Mutex<HashMap<String, Entry>>,
}

/// One live session's bookkeeping; the interpreter itself sits behind its own lock, so a
/// long execution never holds the table.
struct Entry {
    owner: String,
    last_used: Instant,
    memory_bytes: usize,
    live: Arc<tokio::sync::Mutex<Option<Live>>>,
}

/// The bounds sessions live under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    pub(crate) idle: Duration,
    pub(crate) per_owner: usize,
    pub(crate) memory_budget: usize,
}

fn random_tag(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Sessions { replica: random_tag(8), table: Mutex::new(HashMap::new()) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned table only means a panic mid-update of plain bookkeeping; keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends sessions idle past `limits.idle`.
    pub(crate) fn sweep(&self, limits: &SessionLimits) {
        let now = Instant::now();
        self.table().retain(|_, e| now.saturating_duration_since(e.last_used) < limits.idle);
    }

    /// Live sessions right now.
    pub(crate) fn count(&self) -> usize {
        self.table().len()
    }

    /// Room for one more session of `owner`, or why not.
    pub(crate) fn admit(&self, owner: &str, limits: &SessionLimits) -> Result<(), SandboxError> {
        self.sweep(limits);
        let live = self.table().values().filter(|e| e.owner == owner).count();
        if live >= limits.per_owner {
            return Err(SandboxError::TooManySessions(format!(
                "{live} sessions are live, the most allowed; end one (DELETE) or let it expire"
            )));
        }
        Ok(())
    }

    /// Registers a new session and answers its id.
    pub(crate) fn insert(&self, owner: &str, live: Live) -> (String, Arc<tokio::sync::Mutex<Option<Live>>>) {
        let id = format!("{}-{}", self.replica, random_tag(24));
        let slot = Arc::new(tokio::sync::Mutex::new(Some(live)));
        let entry = Entry { owner: owner.to_owned(), last_used: Instant::now(), memory_bytes: 0, live: slot.clone() };
        self.table().insert(id.clone(), entry);
        (id, slot)
    }

    /// The session `id` if it is live and `owner`'s; otherwise a not-found that says whether it
    /// belongs to another replica.
    pub(crate) fn get(
        &self,
        id: &str,
        owner: &str,
        limits: &SessionLimits,
    ) -> Result<Arc<tokio::sync::Mutex<Option<Live>>>, SandboxError> {
        self.sweep(limits);
        let table = self.table();
        match table.get(id) {
            Some(entry) if entry.owner == owner => Ok(entry.live.clone()),
            _ if wire::is_session_id(id) && !id.starts_with(&self.replica) => Err(SandboxError::SessionNotFound(
                "no such session on this sandbox replica (sessions live on the replica that made them, \
                 and end when it restarts)"
                    .to_owned(),
            )),
            _ => Err(SandboxError::SessionNotFound("no such session (ended, expired or never made)".to_owned())),
        }
    }

    /// After an execution: the session's new size and time, then the memory budget enforced by
    /// ending the least recently used others.
    pub(crate) fn touch(&self, id: &str, memory_bytes: usize, limits: &SessionLimits) {
        let mut table = self.table();
        if let Some(entry) = table.get_mut(id) {
            entry.last_used = Instant::now();
            entry.memory_bytes = memory_bytes;
        }
        loop {
            let total: usize = table.values().map(|e| e.memory_bytes).sum();
            if total <= limits.memory_budget {
                break;
            }
            let oldest = table
                .iter()
                .filter(|(other, _)| other.as_str() != id)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(other, _)| other.clone());
            match oldest {
                Some(other) => {
                    tracing::info!("session {other} evicted: the sessions' memory budget is used up");
                    table.remove(&other);
                }
                None => break,
            }
        }
    }

    /// Ends `id` if it is `owner`'s; whether there was one to end.
    pub(crate) fn remove(&self, id: &str, owner: &str) -> bool {
        let mut table = self.table();
        if table.get(id).is_some_and(|e| e.owner == owner) {
            table.remove(id);
            return true;
        }
        false
    }

    /// Forgets `id` (after its interpreter stopped).
    pub(crate) fn forget(&self, id: &str) {
        self.table().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_replica_tag_and_have_one_shape() {
        let sessions = Sessions::new();
        let id = format!("{}-{}", sessions.replica, random_tag(24));
        assert!(wire::is_session_id(&id), "{id}");
        for bad in
            ["", "short", "ABCDEFGH-abcdefghijklmnopqrstuvwx", "abcdefgh_abcdefghijklmnopqrstuvwx", "../../etc/passwd"]
        {
            assert!(!wire::is_session_id(bad), "{bad}");
        }
        assert_ne!(Sessions::new().replica, sessions.replica);
    }
}
