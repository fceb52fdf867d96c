//! Versions beside the requests: the versions each member's `service.version_policy` keeps
//! loaded, and the repository watch.
//!
//! At start-up the version serving is the highest the policy names (or the pinned one); the
//! other versions of an explicit policy load in the background (checks, golden self-test,
//! warm-up) and wait idle, so that a swap to one of them is immediate. A member without a
//! policy of its own loads nothing more at start-up, and a pinned one without a policy is
//! left alone by the watch. With `service.watch_interval_ms`, the
//! repository is looked at again every interval. A version folder is acted on only when it
//! appeared or changed since it was last looked at (its entries' count, sizes or times),
//! and only once it has a non-empty `SHA256SUMS`,
//! and only when the policy names it: a new highest version is swapped in (unless a version is
//! pinned or the member has an experiment), any other is loaded idle. A folder without its
//! list is being copied: it is passed over until the list appears. A version that fails to
//! load is reported (the index, `/api/v1/models`, the log) and tried again only once its
//! folder changes. Between two changes the operator's loads, swaps and unloads stand: the
//! watch never undoes them, and the cap (`service.max_loaded_versions`) frees idle versions,
//! least recently used first.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use augur_actors::gate::ModelGate;

use crate::http::AppState;
use crate::repository::{self, VersionPolicy};

/// What each version folder looked like when it was last looked at: (model, version) ->
/// its [`repository::fingerprint`].
#[derive(Debug, Default)]
pub struct Seen(HashMap<(String, String), repository::Fingerprint>);

/// Loads the policies' versions, then (with a watch interval) looks at the repository every
/// interval until the service stops.
pub async fn run(s: AppState) {
    let mut seen = Seen::default();
    reconcile(&s, &mut seen, true).await;
    loop {
        let every = s.config.read().map(|c| c.service.watch_interval_ms).unwrap_or(0);
        if every == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(every)).await;
        if stopping(&s) {
            return;
        }
        reconcile(&s, &mut seen, false).await;
    }
}

fn stopping(s: &AppState) -> bool {
    s.stopping.load(std::sync::atomic::Ordering::Acquire)
}

/// One member's folders: each version with its fingerprint (`None`: not complete yet), oldest
/// first. Read on a blocking thread: a slow disk must not stall the actors.
async fn scan(models_dir: std::path::PathBuf, id: String) -> Vec<(String, Option<repository::Fingerprint>)> {
    tokio::task::spawn_blocking(move || {
        repository::versions(&models_dir, &id)
            .into_iter()
            .map(|v| {
                let fp = repository::fingerprint(&models_dir.join(&id).join(&v));
                (v, fp)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// One look at the repository (see the module's notes). `first`: the start-up pass, which
/// loads every version an explicit policy names that is not loaded, and swaps nothing.
pub async fn reconcile(s: &AppState, seen: &mut Seen, first: bool) {
    let (models_dir, policies, pins) = match s.config.read() {
        Ok(c) => (
            c.service.models_dir.clone(),
            c.service.version_policy.clone(),
            c.service.versions.clone(),
        ),
        Err(_) => return,
    };
    let gates: Vec<Arc<ModelGate>> = s.pipeline.gates.clone();
    for g in gates {
        let id = g.info.id.to_string();
        let explicit = policies.get(&id).and_then(|p| VersionPolicy::parse(p).ok());
        let pinned = pins.contains_key(&id);
        let serving = g.version().to_string();
        let mut available = Vec::new();
        let mut changed = Vec::new();
        for (v, fp) in scan(models_dir.clone(), id.clone()).await {
            match fp {
                Some(fp) => {
                    if seen.0.insert((id.clone(), v.clone()), fp) != Some(fp) {
                        changed.push(v.clone());
                    }
                    available.push(v);
                }
                // Being copied (no list yet), or a start-up version shipped without one.
                None if v == serving => available.push(v),
                None => {}
            }
        }
        // Without a policy of its own a member keeps only what serves: at start-up nothing
        // more is loaded, and a pinned one is left alone (its pin holds newer versions back).
        if explicit.is_none() && (first || pinned) {
            continue;
        }
        let policy = explicit.unwrap_or_default();
        let wanted = policy.wanted(&available);
        let newest = wanted.last().cloned();
        for v in wanted {
            if stopping(s) {
                return;
            }
            let is_new = changed.contains(&v);
            if !first && !is_new {
                continue;
            }
            if v == *g.version() {
                if is_new && !first {
                    tracing::warn!(model = %id, version = %v, "the serving version's folder changed; it is not reloaded (load another version, then this one, to reload it)");
                }
                continue;
            }
            let _one = s.oip.repository.lock().await;
            // Decided under the lock: an experiment or a load may have landed meanwhile.
            if g.candidate().is_some_and(|c| *c.version == *v) {
                continue;
            }
            let idle = g.idle_versions().iter().any(|i| **i == *v);
            if idle && !is_new {
                continue;
            }
            let serve = !first
                && !pinned
                && g.candidate().is_none()
                && newest.as_deref() == Some(v.as_str())
                && repository::newer(&v, &g.version());
            if !serve && !idle && g.loaded_count() >= g.max_loaded() {
                tracing::warn!(model = %id, version = %v, max_loaded = g.max_loaded(), "version not loaded: no room under service.max_loaded_versions (the serving version and a candidate fill it)");
                continue;
            }
            // A rewritten idle version is loaded again from its new files; the loaded copy
            // serves a swap until then, and stays if the new files fail.
            match crate::oip::load(s, &g, &v, serve).await {
                Ok(()) if serve => {
                    tracing::info!(model = %id, version = %v, "repository watch: new version swapped in");
                    augur_actors::events::ConfigChanged {
                        what: &format!("repository watch: {id} version {v} swapped in"),
                    }
                    .emit();
                }
                Ok(()) => tracing::info!(model = %id, version = %v, "version loaded, idle (version policy)"),
                Err(e) => tracing::warn!(model = %id, version = %v, error = %e, "version not loaded"),
            }
        }
    }
}
