//! The node's side of IVR flows: the prompt library, the live flow set, and its API.
//!
//! The flow logic itself is the `switchyard_flows` crate (sans-IO); calls run it in their core
//! (`crate::call::core::ivr`). Here the node keeps what the runs read: every prompt WAV loaded
//! once at start ([`Prompts`]) and the current [`FlowSet`] ([`FlowStore`]), replaced as a whole
//! when an operator changes it, so a caller's next step reads the new set.
//!
//! Where a change lives: a clustered node proposes it as the `flows` configuration document
//! (Raft), and every node applies the committed document ([`follow_cluster`]); a standalone node
//! keeps it in `<data dir>/flows.json`. Either way a stored set wins over the config file's at
//! start, so an API change is not undone by a restart.

pub mod api;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use switchyard_flows::{Catalog, FlowSet, StepKind};
use switchyard_media::Prompt;

use crate::cluster::ClusterRuntime;

/// Key of the flow set among the cluster's configuration documents.
pub const FLOWS_DOCUMENT: &str = "flows";

/// Every IVR prompt, by `<language>/<name>` (the file `<dir>/<language>/<name>.wav`).
#[derive(Default)]
pub struct Prompts {
    by_name: HashMap<String, Arc<Prompt>>,
}

impl Prompts {
    /// Loads every WAV under `dir`'s language folders. A missing `dir` gives no prompts (the
    /// flow set's validation then names each prompt a flow needs).
    pub fn load(dir: &Path) -> anyhow::Result<Prompts> {
        let mut by_name = HashMap::new();
        let Ok(languages) = std::fs::read_dir(dir) else {
            tracing::info!(dir = %dir.display(), "no prompts directory; flows can play no prompts");
            return Ok(Prompts { by_name });
        };
        for language in languages {
            let language = language.context("cannot list prompts")?.path();
            let (Some(lang), true) = (
                language.file_name().and_then(|n| n.to_str()),
                language.is_dir(),
            ) else {
                continue;
            };
            let files = std::fs::read_dir(&language)
                .with_context(|| format!("cannot list {}", language.display()))?;
            for file in files {
                let path = file.context("cannot list prompts")?.path();
                let (Some(name), Some("wav")) = (
                    path.file_stem().and_then(|n| n.to_str()),
                    path.extension().and_then(|e| e.to_str()),
                ) else {
                    continue;
                };
                let prompt = Prompt::load_wav(&path)
                    .with_context(|| format!("cannot load prompt {}", path.display()))?;
                by_name.insert(format!("{lang}/{name}"), Arc::new(prompt));
            }
        }
        tracing::info!(dir = %dir.display(), prompts = by_name.len(), "prompts loaded");
        Ok(Prompts { by_name })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Prompt>> {
        self.by_name.get(name).cloned()
    }

    /// Prompt names by language, for validating flow sets.
    fn names(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for key in self.by_name.keys() {
            if let Some((language, name)) = key.split_once('/') {
                names
                    .entry(language.to_owned())
                    .or_default()
                    .insert(name.to_owned());
            }
        }
        names
    }
}

/// The flow set calls read now; replaced whole on a change.
pub struct FlowStore {
    current: RwLock<Arc<FlowSet>>,
    prompts: Arc<Prompts>,
    /// The node's trunks, which transfer steps may name.
    trunks: BTreeSet<String>,
    /// Where a standalone node keeps a set changed through the API.
    saved: Option<PathBuf>,
}

impl FlowStore {
    /// A store starting from `initial`, or, on a standalone node, from the set an operator
    /// saved through the API (`saved`, when the file exists).
    pub fn open(
        initial: FlowSet,
        prompts: Arc<Prompts>,
        trunks: BTreeSet<String>,
        saved: Option<PathBuf>,
    ) -> anyhow::Result<FlowStore> {
        let initial = match saved.as_deref().filter(|path| path.exists()) {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let set = serde_json::from_slice(&bytes)
                    .with_context(|| format!("invalid flow set in {}", path.display()))?;
                tracing::info!(path = %path.display(), "flow set changed through the API restored");
                set
            }
            None => initial,
        };
        Ok(FlowStore {
            current: RwLock::new(Arc::new(initial)),
            prompts,
            trunks,
            saved,
        })
    }

    pub fn current(&self) -> Arc<FlowSet> {
        match self.current.read() {
            Ok(set) => Arc::clone(&set),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn prompts(&self) -> &Prompts {
        &self.prompts
    }

    /// Checks `set` against the queues that exist and the prompts loaded; the error lists
    /// every problem, each naming its flow, step and field.
    pub fn check<'q>(
        &self,
        set: &FlowSet,
        queues: impl IntoIterator<Item = &'q str>,
    ) -> Result<(), String> {
        let catalog = Catalog {
            queues: queues.into_iter().map(str::to_owned).collect(),
            trunks: self.trunks.clone(),
            prompts: self.prompts.names(),
        };
        let mut problems: Vec<String> = match switchyard_flows::validate(set, &catalog) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        // A transfer naming no trunk goes through the only one there is.
        for flow in &set.flows {
            for (name, step) in &flow.steps {
                if let StepKind::Transfer(transfer) = &step.kind
                    && transfer.trunk.is_none()
                    && self.trunks.len() != 1
                {
                    problems.push(format!(
                        "flow {:?}, step {name:?}, field \"trunk\": name the trunk ({} configured)",
                        flow.name,
                        self.trunks.len()
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Makes `set` the one calls read from their next step on.
    pub fn replace(&self, set: FlowSet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// Replaces the set on a standalone node and keeps it for the next start.
    fn save(&self, set: FlowSet) -> anyhow::Result<()> {
        if let Some(path) = &self.saved {
            let bytes = serde_json::to_vec_pretty(&set)?;
            let partial = path.with_extension("json.partial");
            std::fs::write(&partial, bytes)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(&partial, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        self.replace(set);
        Ok(())
    }
}

/// Applies every committed change of the cluster's `flows` document to `store`.
pub async fn follow_cluster(runtime: ClusterRuntime, store: Arc<FlowStore>) {
    let mut view = runtime.watch_view();
    let mut applied: Option<Vec<u8>> = None;
    loop {
        let document = view
            .borrow_and_update()
            .state
            .config
            .get(FLOWS_DOCUMENT)
            .cloned();
        if document.is_some() && document != applied {
            match document.as_deref().map(serde_json::from_slice::<FlowSet>) {
                Some(Ok(set)) => {
                    tracing::info!(flows = set.flows.len(), "flow set applied");
                    store.replace(set);
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "stored flow set is unreadable; kept the previous one")
                }
                None => {}
            }
            applied = document;
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hotline example's flows against the shipped prompts and its own queues.
    #[test]
    fn the_hotline_example_flows_are_valid_with_the_shipped_prompts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config = crate::config::Config::load(&root.join("deploy/examples/hotline.toml"))
            .expect("hotline example");
        let prompts = Prompts::load(&root.join("deploy/prompts")).expect("prompts");
        assert!(prompts.get("zh/welcome").is_some() && prompts.get("en/menu").is_some());
        let trunks = config.trunks.iter().map(|t| t.name.clone()).collect();
        let store =
            FlowStore::open(config.flow_set(), Arc::new(prompts), trunks, None).expect("store");
        let queues = config.queues.iter().map(|q| q.name.as_str());
        store.check(&store.current(), queues).expect("valid flows");
        let mut missing_prompt = config.flow_set();
        missing_prompt.flows[0].language = "fr".into();
        let problems = store
            .check(
                &missing_prompt,
                config.queues.iter().map(|q| q.name.as_str()),
            )
            .expect_err("no French prompts");
        assert!(problems.contains(r#"flow "main""#), "{problems}");
    }
}
