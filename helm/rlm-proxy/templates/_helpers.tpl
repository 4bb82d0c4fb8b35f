{{/* Chart name: nameOverride or the chart's own, cut to a valid label value. */}}
{{- define "rlm-proxy.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of the release's objects: fullnameOverride, else "<release>-<name>", or just the release name
when it already contains the chart name (release "rlm-proxy" gives "rlm-proxy", not "rlm-proxy-rlm-proxy").
*/}}
{{- define "rlm-proxy.fullname" -}}
{{- $name := include "rlm-proxy.name" . }}
{{- $full := .Values.fullnameOverride }}
{{- if not $full }}
{{- $full = contains $name .Release.Name | ternary .Release.Name (printf "%s-%s" .Release.Name $name) }}
{{- end }}
{{- $full | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object, without a component. */}}
{{- define "rlm-proxy.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "rlm-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The proxy pods' selector. The component keeps the `helm test` pod (component "test") out of the
Service's endpoints and the PodDisruptionBudget.
*/}}
{{- define "rlm-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rlm-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{/* Labels of the proxy's objects. */}}
{{- define "rlm-proxy.labels" -}}
{{ include "rlm-proxy.commonLabels" . }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "rlm-proxy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "rlm-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "rlm-proxy.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates from `secretEnv`. */}}
{{- define "rlm-proxy.secretName" -}}
{{- printf "%s-env" (include "rlm-proxy.fullname" .) }}
{{- end }}

{{/* Labels of the `helm test` pod, which the NetworkPolicy lets in. */}}
{{- define "rlm-proxy.testLabels" -}}
app.kubernetes.io/name: {{ include "rlm-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/*
Refuses values that would render a broken release; included by the Deployment. `helm lint` does not run
`fail` (by design), `helm template` and `helm install` do.
*/}}
{{- define "rlm-proxy.validate" -}}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "set only one of redis.url and redis.existingSecret" }}
{{- end }}
{{- /* toString: a value given with --set-string is "false", which the proxy reads as false too. */}}
{{- if eq (toString (dig "server" "health_routes" true .Values.config)) "false" }}
{{- fail "config.server.health_routes must stay true: the probes use /livez and /readyz" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (eq (toString (dig "server" "metrics_route" true .Values.config)) "false") }}
{{- fail "serviceMonitor.enabled needs config.server.metrics_route (the /metrics route)" }}
{{- end }}
{{- end }}

{{/*
The proxy's config file: .Values.config, with sandbox.worker_user set when sandboxWorkerUser is.
*/}}
{{- define "rlm-proxy.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.sandboxWorkerUser }}
{{- $_ := set $config "sandbox" (mergeOverwrite (deepCopy (default (dict) $config.sandbox)) (dict "worker_user" "rlm-sandbox")) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
The pod's and the proxy container's securityContext. With sandboxWorkerUser the proxy runs as root,
holding only CAP_SETUID and CAP_SETGID, to start the workers as rlm-sandbox.
*/}}
{{- define "rlm-proxy.podSecurityContext" -}}
{{- $context := deepCopy .Values.podSecurityContext }}
{{- if .Values.sandboxWorkerUser }}
{{- $context = mergeOverwrite $context (dict "runAsNonRoot" false "runAsUser" 0 "runAsGroup" 0) }}
{{- end }}
{{- toYaml $context }}
{{- end }}

{{- define "rlm-proxy.securityContext" -}}
{{- $context := deepCopy .Values.securityContext }}
{{- if .Values.sandboxWorkerUser }}
{{- $capabilities := dict "drop" (list "ALL") "add" (list "SETUID" "SETGID") }}
{{- $context = mergeOverwrite $context (dict "runAsNonRoot" false "capabilities" $capabilities) }}
{{- end }}
{{- toYaml $context }}
{{- end }}
