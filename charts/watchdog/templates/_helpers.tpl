{{- define "watchdog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "watchdog.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "watchdog.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "watchdog.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "watchdog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "watchdog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "watchdog.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "watchdog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "watchdog.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "watchdog.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A hostPath volume name from a path: /run/containerd -> host-run-containerd */}}
{{- define "watchdog.volumeName" -}}
{{- printf "host%s" (. | replace "/" "-" | replace "." "-" | replace "_" "-") | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The capabilities the container gets: the configured set, plus KILL when
remediation enforces (kill_container signals the tasks of another cgroup). */}}
{{- define "watchdog.capabilities" -}}
{{- $caps := .Values.securityContext.capabilities }}
{{- if and (eq .Values.remediation.mode "enforce") (not (has "KILL" $caps)) }}
{{- $caps = append $caps "KILL" }}
{{- end }}
{{- toJson $caps }}
{{- end }}

{{/* watchdog.toml: the config values, with the metrics address and the
remediation policy from their own values. */}}
{{- define "watchdog.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "metrics" (dict "addr" (ternary (printf "0.0.0.0:%d" (int .Values.metrics.port)) "" .Values.metrics.enabled)) }}
{{- $rem := dict "mode" .Values.remediation.mode "allow_actions" .Values.remediation.allowActions "journal" (printf "%s/remediation.jsonl" .Values.remediation.journalHostPath) }}
{{- if .Values.remediation.leaseNamespace }}
{{- $_ := set $rem "cluster" (dict "lease_namespace" .Values.remediation.leaseNamespace) }}
{{- end }}
{{- $_ := set $cfg "remediation" (merge $rem (default dict (index .Values.config "remediation"))) }}
{{- if .Values.bundle.enabled }}
{{- $_ := set $cfg "bundle" (dict "dir" .Values.bundle.hostPath "min_interval" .Values.bundle.minInterval "max_total_mib" .Values.bundle.maxTotalMiB) }}
{{- end }}
{{- include "watchdog.toml" $cfg }}
{{- end }}

{{/* A TOML value. Helm reads every number in values as a float: a whole
number is written as an integer (`events_per_minute = 6`, not `6.0`, which
the agent rejects for an integer key; an integer is fine for a float key). */}}
{{- define "watchdog.tomlValue" -}}
{{- $k := kindOf . -}}
{{- if eq $k "string" -}}{{ toJson . }}
{{- else if eq $k "bool" -}}{{ . }}
{{- else if or (eq $k "float64") (eq $k "float32") -}}{{ if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (eq $k "int") (eq $k "int64") -}}{{ . }}
{{- else if eq $k "slice" -}}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "watchdog.tomlValue" $v }}{{ end }}]
{{- else -}}{{ fail (printf "config: %v is a %s, not a TOML value" . $k) }}
{{- end -}}
{{- end }}

{{/* watchdog.toml from a dict: top-level keys, then one [table] per map. */}}
{{- define "watchdog.toml" -}}
{{- include "watchdog.tomlTable" (dict "prefix" "" "table" .) }}
{{- end }}

{{/* One TOML table's keys, then its sub-tables as [prefix.key] (any depth:
[remediation.ladder.pid_exhaustion]). */}}
{{- define "watchdog.tomlTable" -}}
{{- $p := .prefix }}
{{- range $k, $v := .table }}
{{- if ne (kindOf $v) "map" }}
{{ $k }} = {{ include "watchdog.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if eq (kindOf $v) "map" }}
{{- $name := ternary $k (printf "%s.%s" $p $k) (eq $p "") }}

[{{ $name }}]
{{- include "watchdog.tomlTable" (dict "prefix" $name "table" $v) }}
{{- end }}
{{- end }}
{{- end }}
