{{- define "domain-lm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "domain-lm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "domain-lm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "domain-lm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "domain-lm.labels" -}}
{{ include "domain-lm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Secret holding API keys: the user's existing one, or the one this chart creates. */}}
{{- define "domain-lm.apiKeysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "domain-lm.fullname" .)) -}}
{{- end -}}

{{/* Where the trusted bundle public key comes from: the user's Secret, or the ConfigMap this chart makes. */}}
{{- define "domain-lm.bundleKeyVolume" -}}
{{- if .Values.bundle.publicKeySecret -}}
secret:
  secretName: {{ .Values.bundle.publicKeySecret }}
{{- else -}}
configMap:
  name: {{ include "domain-lm.fullname" . }}-bundle-key
{{- end -}}
{{- end -}}

{{/* GPUs per pod: the tensor-parallel size when it is on. */}}
{{- define "domain-lm.gpuCount" -}}
{{- if .Values.tensorParallel.enabled -}}{{ .Values.tensorParallel.size }}{{- else -}}{{ .Values.gpu.count }}{{- end -}}
{{- end -}}

{{- define "domain-lm.validate" -}}
{{- if and .Values.tensorParallel.enabled (not .Values.gpu.enabled) -}}
{{- fail "tensorParallel.enabled needs gpu.enabled=true: tensor parallelism shards the model over the GPUs of one node" -}}
{{- end -}}
{{- if and .Values.tensorParallel.enabled (lt (int .Values.tensorParallel.size) 2) -}}
{{- fail "tensorParallel.size must be 2 or more (the number of GPUs to shard the model over)" -}}
{{- end -}}
{{- if not (or .Values.apiKeys.disabled .Values.apiKeys.existingSecret .Values.apiKeys.entries) -}}
{{- fail "API keys are required: set apiKeys.existingSecret (a Secret with key api-keys.yaml) or apiKeys.entries (from `domain-lm serve keygen`); apiKeys.disabled=true is for local development only" -}}
{{- end -}}
{{- if not (or .Values.bundle.publicKey .Values.bundle.publicKeySecret .Values.bundle.allowUnsigned) -}}
{{- fail "bundles are served only when signed: set bundle.publicKey (PEM from `domain-lm bundle keygen`) or bundle.publicKeySecret; bundle.allowUnsigned=true is for development only" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.templateStore.existingClaim) -}}
{{- fail "with more than one replica, runtime templates need a shared store: set templateStore.existingClaim (a ReadWriteMany PVC) so every replica serves the same versions" -}}
{{- end -}}
{{- if and (not .Values.models.existingClaim) (not .Values.models.hostPath) -}}
{{- fail "set models.existingClaim (a PVC holding the bundles) or models.hostPath" -}}
{{- end -}}
{{- end -}}
