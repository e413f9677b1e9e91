{{/*
Names. With release `spire` the objects are named as SPIRE's chart names them (spire-server,
spire-agent, spire-spiffe-csi-driver), so commands from SPIRE guides (`kubectl rollout status
statefulset spire-server`, `kubectl logs daemonset/spire-agent`) work unchanged.
*/}}
{{- define "sigil.name" -}}
{{- $release := .root.Release.Name -}}
{{- if hasSuffix (printf "-%s" .component) $release -}}
{{- $release | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" $release .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sigil.server.fullname" -}}{{ include "sigil.name" (dict "root" . "component" "server") }}{{- end -}}
{{- define "sigil.agent.fullname" -}}{{ include "sigil.name" (dict "root" . "component" "agent") }}{{- end -}}
{{- define "sigil.controller.fullname" -}}{{ include "sigil.name" (dict "root" . "component" "controller-manager") }}{{- end -}}
{{- define "sigil.csi.fullname" -}}{{ include "sigil.name" (dict "root" . "component" "spiffe-csi-driver") }}{{- end -}}

{{- define "sigil.server.serviceAccountName" -}}
{{- default (include "sigil.server.fullname" .) (index .Values "spire-server").serviceAccount.name -}}
{{- end -}}
{{- define "sigil.agent.serviceAccountName" -}}
{{- default (include "sigil.agent.fullname" .) (index .Values "spire-agent").serviceAccount.name -}}
{{- end -}}

{{/* Labels: the recommended ones, plus `app` (older SPIRE guides select `app=spire-server`). */}}
{{- define "sigil.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: sigil
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "sigil.selectorLabels" . }}
{{- end -}}

{{- define "sigil.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* The trust domain: global.spire.trustDomain, else global.trustDomain (older charts). */}}
{{- define "sigil.trustDomain" -}}
{{- $g := .Values.global -}}
{{- coalesce (dig "spire" "trustDomain" "" $g) (dig "trustDomain" "" $g) "example.org" -}}
{{- end -}}

{{/* The cluster name: global.spire.clusterName, else global.clusterName. */}}
{{- define "sigil.clusterName" -}}
{{- $g := .Values.global -}}
{{- coalesce (dig "spire" "clusterName" "" $g) (dig "clusterName" "" $g) "example-cluster" -}}
{{- end -}}

{{- define "sigil.jwtIssuer" -}}
{{- coalesce (dig "spire" "jwtIssuer" "" .Values.global) (index .Values "spire-server").jwtIssuer | default "" -}}
{{- end -}}

{{/* The controller runs when both the chart's and the older charts' switches allow it. */}}
{{- define "sigil.controller.enabled" -}}
{{- $server := index .Values "spire-server" -}}
{{- if and $server.enabled $server.controllerManager.enabled (index .Values "spire-controller-manager").enabled -}}true{{- end -}}
{{- end -}}

{{- define "sigil.controller.className" -}}
{{- default (printf "%s-%s" .Release.Namespace .Release.Name) (index .Values "spire-server").controllerManager.className -}}
{{- end -}}

{{/*
An image reference. `image` is the component's image values, `defaults` Sigil's top-level
`image` (nil for third-party images). global.spire.image.registry overrides every registry.
*/}}
{{- define "sigil.image" -}}
{{- $registry := coalesce (dig "spire" "image" "registry" "" .root.Values.global) .image.registry (dig "registry" "" (default (dict) .defaults)) | default "" -}}
{{- $tag := coalesce .image.tag (dig "tag" "" (default (dict) .defaults)) .root.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository (toString $tag) -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (toString $tag) -}}
{{- end -}}
{{- end -}}

{{- define "sigil.pullPolicy" -}}
{{- coalesce .image.pullPolicy (dig "pullPolicy" "" (default (dict) .defaults)) "IfNotPresent" -}}
{{- end -}}

{{/* Where the server's admin socket lives: an emptyDir at /tmp/spire-server shared with the
controller; the server creates private/ in it with mode 0700 (it refuses a world-writable
socket directory, which an emptyDir's root is). The path is SPIRE's chart's. */}}
{{- define "sigil.server.socketDir" -}}/tmp/spire-server{{- end -}}
{{- define "sigil.server.socketPath" -}}/tmp/spire-server/private/api.sock{{- end -}}

{{/* The agent's socket directory inside its container (SPIRE's chart's path). */}}
{{- define "sigil.agent.socketDir" -}}/tmp/spire-agent/public{{- end -}}
{{- define "sigil.agent.socketPath" -}}{{ include "sigil.agent.socketDir" . }}/{{ base (index .Values "spire-agent").socketPath }}{{- end -}}

{{- define "sigil.agent.serverAddress" -}}
{{- $agent := index .Values "spire-agent" -}}
{{- default (printf "%s.%s" (include "sigil.server.fullname" .) .Release.Namespace) $agent.server.address -}}
{{- end -}}

{{- define "sigil.agent.serverPort" -}}
{{- $agent := index .Values "spire-agent" -}}
{{- if $agent.server.port -}}{{ $agent.server.port }}{{- else -}}{{ (index .Values "spire-server").service.port }}{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the trust bundle: the server's k8sbundle notifier keeps it, agents
bootstrap from it (SPIRE's chart: `spire-bundle`). */}}
{{- define "sigil.agent.bundleConfigMap" -}}
{{- coalesce (dig "spire" "bundleConfigMap" "" .Values.global) (index .Values "spire-agent").bundleConfigMap | default "spire-bundle" -}}
{{- end -}}

{{/* Capabilities the agent gets (see deploy/helm/README.md, "Attestation tiers"). */}}
{{- define "sigil.agent.capabilities" -}}
{{- $agent := index .Values "spire-agent" -}}
{{- $caps := list -}}
{{- if $agent.attestation.ebpf -}}
{{- $caps = concat $caps (list "BPF" "PERFMON" "SYS_ADMIN" "SYS_PTRACE") -}}
{{- else if and $agent.workloadAttestors.unix.enabled $agent.workloadAttestors.unix.discoverWorkloadPath -}}
{{- $caps = append $caps "SYS_PTRACE" -}}
{{- end -}}
{{- toJson $caps -}}
{{- end -}}

{{- define "sigil.checks" -}}
{{- $server := index .Values "spire-server" -}}
{{- $agent := index .Values "spire-agent" -}}
{{- if .Values.global.spire.strictMode -}}
{{- if eq (include "sigil.trustDomain" .) "example.org" -}}{{- fail "global.spire.strictMode: set global.spire.trustDomain (it is still example.org)" -}}{{- end -}}
{{- if eq (include "sigil.clusterName" .) "example-cluster" -}}{{- fail "global.spire.strictMode: set global.spire.clusterName (it is still example-cluster)" -}}{{- end -}}
{{- end -}}
{{- $sql := $server.dataStore.sql -}}
{{- if not (has $sql.databaseType (list "sqlite3" "postgres")) -}}
{{- fail (printf "spire-server.dataStore.sql.databaseType %q: Sigil supports sqlite3 and postgres" $sql.databaseType) -}}
{{- end -}}
{{- if and (eq $sql.databaseType "postgres") (not $sql.host) -}}
{{- fail "spire-server.dataStore.sql.host: required with databaseType postgres" -}}
{{- end -}}
{{- if and (gt (int $server.replicaCount) 1) (ne $sql.databaseType "postgres") -}}
{{- fail (printf "spire-server.replicaCount %d: several servers share one datastore, which must be PostgreSQL (spire-server.dataStore.sql.databaseType: postgres); with sqlite3 the server runs as one replica" (int $server.replicaCount)) -}}
{{- end -}}
{{- if and $sql.externalSecret.enabled (or (not $sql.externalSecret.name) (not $sql.externalSecret.key)) -}}
{{- fail "spire-server.dataStore.sql.externalSecret: name and key are required when enabled" -}}
{{- end -}}
{{- if $agent.trustBundleURL -}}
{{- fail "spire-agent.trustBundleURL: sigil-agent has no trust_bundle_url; use spire-agent.bundleConfigMap or spire-agent.trustBundleHostPath" -}}
{{- end -}}
{{- if and $agent.enabled (not $agent.nodeAttestor.k8sPSAT.enabled) -}}
{{- fail "spire-agent.nodeAttestor.k8sPSAT.enabled: the chart's agents attest with k8s_psat (join tokens are single-use, no fit for a DaemonSet)" -}}
{{- end -}}
{{- if and $agent.enabled (not (or $agent.workloadAttestors.k8s.enabled $agent.workloadAttestors.unix.enabled)) -}}
{{- fail "spire-agent.workloadAttestors: enable k8s, unix or both" -}}
{{- end -}}
{{- if and $agent.attestation.lsm (not $agent.attestation.ebpf) -}}
{{- fail "spire-agent.attestation.lsm needs spire-agent.attestation.ebpf (the lsm tier is an eBPF program)" -}}
{{- end -}}
{{- if and (has $agent.attestation.tier (list "lsm" "fentry" "tp_btf")) (not $agent.attestation.ebpf) -}}
{{- fail (printf "spire-agent.attestation.tier %s is an eBPF tier: it needs spire-agent.attestation.ebpf" $agent.attestation.tier) -}}
{{- end -}}
{{- end -}}

{{- /* Whether the PostgreSQL connection string carries a password (from the DBPW env var). */}}
{{- define "sigil.server.dbPassword" -}}
{{- $sql := (index .Values "spire-server").dataStore.sql -}}
{{- if and (eq $sql.databaseType "postgres") (or $sql.password $sql.externalSecret.enabled) -}}true{{- end -}}
{{- end -}}

{{- /* DataStore "sql" plugin_data, as SPIRE's chart builds it: a libpq keyword/value string
       for postgres with the password as ${DBPW} (the server runs with -expandEnv and DBPW from a
       Secret), the file for sqlite3. */}}
{{- define "sigil.server.datastore" -}}
{{- $sql := (index .Values "spire-server").dataStore.sql -}}
{{- $data := dict "database_type" $sql.databaseType -}}
{{- if eq $sql.databaseType "postgres" -}}
{{- $conn := printf "dbname=%s user=%s" $sql.databaseName $sql.username -}}
{{- if include "sigil.server.dbPassword" . }}{{ $conn = printf "%s password=${DBPW}" $conn }}{{ end -}}
{{- $conn = printf "%s host=%s port=%d" $conn $sql.host (int $sql.port | default 5432) -}}
{{- range $sql.options }}{{ range $k, $v := . }}{{ $conn = printf "%s %s=%v" $conn $k $v }}{{ end }}{{ end -}}
{{- with $sql.rootCAPath }}{{ $conn = printf "%s sslrootcert=%s" $conn . }}{{ end -}}
{{- with $sql.clientCertPath }}{{ $conn = printf "%s sslcert=%s" $conn . }}{{ end -}}
{{- with $sql.clientKeyPath }}{{ $conn = printf "%s sslkey=%s" $conn . }}{{ end -}}
{{- $_ := set $data "connection_string" $conn -}}
{{- $_ := set $data "max_open_conns" (int $sql.maxOpenConns) -}}
{{- $_ := set $data "max_idle_conns" (int $sql.maxIdleConns) -}}
{{- if and $sql.connMaxLifetime (ne (toString $sql.connMaxLifetime) "0") }}{{ $_ := set $data "conn_max_lifetime" (toString $sql.connMaxLifetime) }}{{ end -}}
{{- $_ := set $data "disable_migration" $sql.disableMigration -}}
{{- else -}}
{{- $_ := set $data "connection_string" $sql.file -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}
