//! `sigil-controller -config FILE`: spire-controller-manager's `ControllerManagerConfig` YAML,
//! read the way upstream reads it, so the file a SPIRE user already has works unchanged.
//!
//! Upstream (`LoadOptionsFromFile`) starts from defaults, lets every key the file sets replace
//! the default (lists are replaced, not merged), then derives the manager options (leader
//! election, cache namespaces, metrics and health addresses) and, in `main`, fills what is still
//! unset: the GC interval, the server socket, what to reconcile, the ignore-namespace regular
//! expressions. [`ControllerManagerConfig::load`] does all of that; keys the file sets that
//! Sigil does not act on are returned ([`Loaded::not_used`]) for the caller to log once, never
//! an error (upstream's decoder is not strict either).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

/// Upstream's `apiVersion`/`kind` for this file.
pub const API_VERSION: &str = "spire.spiffe.io/v1alpha1";
pub const KIND: &str = "ControllerManagerConfig";
/// Upstream's defaults (`cmd/main.go`).
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_SPIRE_SERVER_SOCKET_PATH: &str = "/spire-server/api.sock";
pub const DEFAULT_IGNORE_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "spire-system"];
/// The service whose CNAME tells the cluster domain when `clusterDomain` is not set.
pub const K8S_DEFAULT_SERVICE: &str = "kubernetes.default.svc";

/// The configuration, with upstream's field names in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct ControllerManagerConfig {
    pub cluster_name: String,
    /// Empty: detected from the CNAME of `kubernetes.default.svc` ([`cluster_domain_from_cname`]).
    pub cluster_domain: String,
    pub trust_domain: String,
    /// Regular expressions (unanchored, as Go's `MatchString`).
    pub ignore_namespaces: Vec<String>,
    pub validating_webhook_configuration_name: String,
    pub gc_interval: Duration,
    pub spire_server_socket_path: String,
    pub log_level: String,
    pub log_encoding: String,
    pub class_name: String,
    pub watch_classless: bool,
    pub parent_id_template: String,
    /// `None`: upstream's default (everything, except ClusterSPIFFEIDs in static mode).
    pub reconcile: Option<Reconcile>,
    pub entry_id_prefix: String,
    pub entry_id_prefix_cleanup: Option<String>,
    pub static_manifest_path: Option<String>,
    pub expand_env_static_manifests: bool,
    pub leader_election: Option<LeaderElection>,
    pub cache_namespace: String,
    pub cache_namespaces: BTreeMap<String, NamespaceCache>,
    pub metrics_bind_address: String,
    pub health: Health,
}

/// `reconcile`: which resources are reconciled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconcile {
    pub cluster_spiffeids: bool,
    pub cluster_federated_trust_domains: bool,
    pub cluster_static_entries: bool,
}

/// `leaderElection` (component-base's `LeaderElectionConfiguration`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderElection {
    pub leader_elect: Option<bool>,
    pub resource_lock: String,
    pub resource_name: String,
    pub resource_namespace: String,
    pub lease_duration: Option<Duration>,
    pub renew_deadline: Option<Duration>,
    pub retry_period: Option<Duration>,
}

/// One `cacheNamespaces` entry: equality selectors for what the cache of that namespace holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceCache {
    pub label_selectors: BTreeMap<String, String>,
    pub field_selectors: BTreeMap<String, String>,
}

/// `health`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub health_probe_bind_address: String,
    pub readiness_endpoint_name: String,
    pub liveness_endpoint_name: String,
}

/// What the manager runs with, derived from the file (upstream's `ctrl.Options` subset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagerOptions {
    pub leader_election: bool,
    pub leader_election_resource_lock: String,
    pub leader_election_namespace: String,
    pub leader_election_id: String,
    pub lease_duration: Option<Duration>,
    pub renew_deadline: Option<Duration>,
    pub retry_period: Option<Duration>,
    /// `None`: every namespace.
    pub default_namespaces: Option<BTreeMap<String, NamespaceCache>>,
    pub metrics_bind_address: String,
    pub health_probe_bind_address: String,
    pub readiness_endpoint_name: String,
    pub liveness_endpoint_name: String,
}

/// A loaded file: the configuration, the manager options, and the keys it set that Sigil does
/// not use (to be logged once).
#[derive(Debug)]
pub struct Loaded {
    pub config: ControllerManagerConfig,
    pub options: ManagerOptions,
    pub not_used: Vec<String>,
}

/// Why the file could not be used. Messages follow upstream's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Upstream: `could not read file at <path>: open <path>: <reason>`.
    #[error("could not read file at {path}: open {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("could not decode file into runtime.Object: {0}")]
    Decode(String),
    #[error("invalid {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("cacheNamespace or cacheNamespaces can be used, but not both")]
    CacheNamespaces,
    #[error("unable to compile ignore namespaces regex: {0}")]
    IgnoreNamespace(#[from] regex::Error),
}

// === impl ControllerManagerConfig ===

impl Default for ControllerManagerConfig {
    /// Upstream's defaults, before the file.
    fn default() -> Self {
        Self {
            cluster_name: String::new(),
            cluster_domain: String::new(),
            trust_domain: String::new(),
            ignore_namespaces: DEFAULT_IGNORE_NAMESPACES.map(String::from).to_vec(),
            validating_webhook_configuration_name: String::new(),
            gc_interval: DEFAULT_GC_INTERVAL,
            spire_server_socket_path: String::new(),
            log_level: "info".into(),
            log_encoding: "console".into(),
            class_name: String::new(),
            watch_classless: false,
            parent_id_template: String::new(),
            reconcile: None,
            entry_id_prefix: String::new(),
            entry_id_prefix_cleanup: None,
            static_manifest_path: None,
            expand_env_static_manifests: false,
            leader_election: None,
            cache_namespace: String::new(),
            cache_namespaces: BTreeMap::new(),
            metrics_bind_address: String::new(),
            health: Health::default(),
        }
    }
}

impl ControllerManagerConfig {
    /// Reads `path` over the defaults (upstream's `LoadOptionsFromFile` then `main`), with
    /// `$VAR`/`${VAR}` expanded from the environment when `expand_env`.
    pub fn load(path: &Path, expand_env: bool) -> Result<Loaded, ConfigError> {
        Self::default().load_into(path, expand_env, |name| std::env::var(name).ok())
    }

    /// [`load`](Self::load) over `self` (the "initial config" of upstream's loader), with `env`
    /// standing in for the environment.
    pub fn load_into(
        mut self,
        path: &Path,
        expand_env: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: go_io_reason(&e),
        })?;
        let text = if expand_env {
            sigil_config::expand_env_with(&text, env)
        } else {
            text
        };
        let not_used = self.apply_text(&text)?;
        let options = self.manager_options()?;
        self.fill_defaults();
        Ok(Loaded {
            config: self,
            options,
            not_used,
        })
    }

    /// Applies the keys of one YAML (or JSON) document; returns the keys it did not use.
    fn apply_text(&mut self, text: &str) -> Result<Vec<String>, ConfigError> {
        let doc: Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Decode(e.to_string()))?;
        let Value::Object(mut doc) = doc else {
            return Err(ConfigError::Decode(
                "the file is not a YAML mapping".to_string(),
            ));
        };
        // Upstream's decoder looks the type up by apiVersion and kind: anything else is not a
        // ControllerManagerConfig.
        let api_version = take_string(&mut doc, "apiVersion")?.unwrap_or_default();
        let kind = take_string(&mut doc, "kind")?.unwrap_or_default();
        if api_version != API_VERSION || kind != KIND {
            return Err(ConfigError::Decode(format!(
                "no kind \"{kind}\" is registered for version \"{api_version}\" (want apiVersion {API_VERSION}, kind {KIND})"
            )));
        }
        // Read (upstream's tests look at it) but without effect here: Sigil has no webhook.
        let sets_webhook_name = doc.contains_key("validatingWebhookConfigurationName");
        macro_rules! set_string {
            ($key:literal, $field:expr) => {
                if let Some(v) = take_string(&mut doc, $key)? {
                    $field = v;
                }
            };
        }
        set_string!("clusterName", self.cluster_name);
        set_string!("clusterDomain", self.cluster_domain);
        set_string!("trustDomain", self.trust_domain);
        set_string!(
            "validatingWebhookConfigurationName",
            self.validating_webhook_configuration_name
        );
        set_string!("spireServerSocketPath", self.spire_server_socket_path);
        set_string!("logLevel", self.log_level);
        set_string!("logEncoding", self.log_encoding);
        set_string!("className", self.class_name);
        set_string!("parentIDTemplate", self.parent_id_template);
        set_string!("entryIDPrefix", self.entry_id_prefix);
        set_string!("cacheNamespace", self.cache_namespace);
        if let Some(v) = take(&mut doc, "ignoreNamespaces") {
            self.ignore_namespaces = strings("ignoreNamespaces", v)?;
        }
        if let Some(v) = take(&mut doc, "gcInterval") {
            self.gc_interval = duration("gcInterval", &v)?;
        }
        if let Some(v) = take_bool(&mut doc, "watchClassless")? {
            self.watch_classless = v;
        }
        if let Some(v) = take_bool(&mut doc, "expandEnvStaticManifests")? {
            self.expand_env_static_manifests = v;
        }
        if let Some(v) = take_string(&mut doc, "entryIDPrefixCleanup")? {
            self.entry_id_prefix_cleanup = Some(v);
        }
        if let Some(v) = take_string(&mut doc, "staticManifestPath")? {
            self.static_manifest_path = Some(v);
        }
        if let Some(v) = take(&mut doc, "reconcile") {
            let mut m = object("reconcile", v)?;
            self.reconcile = Some(Reconcile {
                cluster_spiffeids: take_bool(&mut m, "clusterSPIFFEIDs")?.unwrap_or(false),
                cluster_federated_trust_domains: take_bool(&mut m, "clusterFederatedTrustDomains")?
                    .unwrap_or(false),
                cluster_static_entries: take_bool(&mut m, "clusterStaticEntries")?.unwrap_or(false),
            });
        }
        if let Some(v) = take(&mut doc, "leaderElection") {
            let mut m = object("leaderElection", v)?;
            let d = |m: &mut Map<String, Value>, key: &str| {
                take(m, key)
                    .map(|v| duration(&format!("leaderElection.{key}"), &v))
                    .transpose()
            };
            self.leader_election = Some(LeaderElection {
                leader_elect: take_bool(&mut m, "leaderElect")?,
                resource_lock: take_string(&mut m, "resourceLock")?.unwrap_or_default(),
                resource_name: take_string(&mut m, "resourceName")?.unwrap_or_default(),
                resource_namespace: take_string(&mut m, "resourceNamespace")?.unwrap_or_default(),
                lease_duration: d(&mut m, "leaseDuration")?,
                renew_deadline: d(&mut m, "renewDeadline")?,
                retry_period: d(&mut m, "retryPeriod")?,
            });
        }
        if let Some(v) = take(&mut doc, "cacheNamespaces") {
            self.cache_namespaces = BTreeMap::new();
            for (ns, opts) in object("cacheNamespaces", v)? {
                let mut cache = NamespaceCache::default();
                if !opts.is_null() {
                    let mut m = object(&format!("cacheNamespaces.{ns}"), opts)?;
                    if let Some(v) = take(&mut m, "labelSelectors") {
                        cache.label_selectors = string_map("labelSelectors", v)?;
                    }
                    if let Some(v) = take(&mut m, "fieldSelectors") {
                        cache.field_selectors = string_map("fieldSelectors", v)?;
                    }
                }
                self.cache_namespaces.insert(ns, cache);
            }
        }
        if let Some(v) = take(&mut doc, "metrics") {
            let mut m = object("metrics", v)?;
            if let Some(v) = take_string(&mut m, "bindAddress")? {
                self.metrics_bind_address = v;
            }
        }
        if let Some(v) = take(&mut doc, "health") {
            let mut m = object("health", v)?;
            if let Some(v) = take_string(&mut m, "healthProbeBindAddress")? {
                self.health.health_probe_bind_address = v;
            }
            if let Some(v) = take_string(&mut m, "readinessEndpointName")? {
                self.health.readiness_endpoint_name = v;
            }
            if let Some(v) = take_string(&mut m, "livenessEndpointName")? {
                self.health.liveness_endpoint_name = v;
            }
        }
        // What is left (`webhook`, `grpc`, `syncPeriod`, ..., or a typo), and what is read but
        // has no effect here, is reported.
        let mut not_used: Vec<String> = doc.keys().cloned().collect();
        if sets_webhook_name {
            not_used.push("validatingWebhookConfigurationName".into());
        }
        not_used.sort();
        Ok(not_used)
    }

    /// Upstream's `addOptionsFromConfigSpec` on empty options.
    pub fn manager_options(&self) -> Result<ManagerOptions, ConfigError> {
        let mut o = ManagerOptions::default();
        if let Some(le) = &self.leader_election {
            o.leader_election = le.leader_elect.unwrap_or(false);
            o.leader_election_resource_lock = le.resource_lock.clone();
            o.leader_election_namespace = le.resource_namespace.clone();
            o.leader_election_id = le.resource_name.clone();
            o.lease_duration = le.lease_duration;
            o.renew_deadline = le.renew_deadline;
            o.retry_period = le.retry_period;
        }
        o.default_namespaces = match (
            self.cache_namespace.is_empty(),
            self.cache_namespaces.is_empty(),
        ) {
            (false, false) => return Err(ConfigError::CacheNamespaces),
            (false, true) => Some(BTreeMap::from([(
                self.cache_namespace.clone(),
                NamespaceCache::default(),
            )])),
            (true, false) => Some(self.cache_namespaces.clone()),
            (true, true) => None,
        };
        o.metrics_bind_address = self.metrics_bind_address.clone();
        o.health_probe_bind_address = self.health.health_probe_bind_address.clone();
        o.readiness_endpoint_name = self.health.readiness_endpoint_name.clone();
        o.liveness_endpoint_name = self.health.liveness_endpoint_name.clone();
        Ok(o)
    }

    /// What upstream's `main` fills in after loading.
    fn fill_defaults(&mut self) {
        if self.gc_interval.is_zero() {
            self.gc_interval = DEFAULT_GC_INTERVAL;
        }
        if self.spire_server_socket_path.is_empty() {
            self.spire_server_socket_path = DEFAULT_SPIRE_SERVER_SOCKET_PATH.into();
        }
    }

    /// What is reconciled: the file's `reconcile`, else everything (ClusterSPIFFEIDs not in
    /// static-manifest mode).
    pub fn reconcile(&self) -> Reconcile {
        self.reconcile.unwrap_or(Reconcile {
            cluster_spiffeids: self.static_manifest_path.is_none(),
            cluster_federated_trust_domains: true,
            cluster_static_entries: true,
        })
    }

    /// `ignoreNamespaces`, compiled.
    pub fn ignore_namespaces(&self) -> Result<IgnoreNamespaces, ConfigError> {
        Ok(IgnoreNamespaces(
            self.ignore_namespaces
                .iter()
                .map(|p| regex::Regex::new(p))
                .collect::<Result<_, _>>()?,
        ))
    }
}

/// `ignoreNamespaces` as regular expressions: a namespace is ignored if any matches anywhere in
/// its name (Go's `MatchString` is a search, not a full match).
#[derive(Clone, Debug)]
pub struct IgnoreNamespaces(Vec<regex::Regex>);

impl IgnoreNamespaces {
    pub fn is_ignored(&self, namespace: &str) -> bool {
        self.0.iter().any(|r| r.is_match(namespace))
    }
}

/// The cluster domain from the CNAME of `kubernetes.default.svc` (upstream's
/// `parseClusterDomainCNAME`).
pub fn cluster_domain_from_cname(cname: &str) -> Result<String, &'static str> {
    let Some(domain) = cname.strip_prefix(&format!("{K8S_DEFAULT_SERVICE}.")) else {
        return Err("CNAME did not have expected prefix");
    };
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err("CNAME did not have a cluster domain");
    }
    Ok(domain.to_string())
}

/// The reason part of Go's `*PathError` text for common errors.
fn go_io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => e.to_string(),
    }
}

fn take(m: &mut Map<String, Value>, key: &str) -> Option<Value> {
    m.remove(key).filter(|v| !v.is_null())
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn take_string(m: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    match take(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        // YAML reads `clusterName: 2` as a number; upstream's decoder would refuse it.
        Some(other) => Err(invalid(key, format!("want a string, got {other}"))),
    }
}

fn take_bool(m: &mut Map<String, Value>, key: &str) -> Result<Option<bool>, ConfigError> {
    match take(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(invalid(key, format!("want true or false, got {other}"))),
    }
}

fn object(key: &str, v: Value) -> Result<Map<String, Value>, ConfigError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(invalid(key, format!("want a mapping, got {other}"))),
    }
}

fn strings(key: &str, v: Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                other => Err(invalid(key, format!("want strings, got {other}"))),
            })
            .collect(),
        other => Err(invalid(key, format!("want a list, got {other}"))),
    }
}

fn string_map(key: &str, v: Value) -> Result<BTreeMap<String, String>, ConfigError> {
    object(key, v)?
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(invalid(key, format!("want string values, got {other}"))),
        })
        .collect()
}

/// A duration: upstream's `gcInterval` is a Go `time.Duration`, which JSON gives as integer
/// nanoseconds; a Go duration string (`"10s"`), which upstream refuses, is accepted too
/// because it is what people write.
fn duration(key: &str, v: &Value) -> Result<Duration, ConfigError> {
    let nanos = match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| invalid(key, format!("{n} is not a whole number of nanoseconds")))?,
        Value::String(s) => {
            crate::duration::parse_go_duration(s).map_err(|e| invalid(key, e.to_string()))?
        }
        other => return Err(invalid(key, format!("want a duration, got {other}"))),
    };
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| invalid(key, "must not be negative"))
}
