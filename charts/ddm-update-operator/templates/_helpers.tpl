{{/* The chart name, truncated to a DNS label. */}}
{{- define "ddm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: "<release>" when it already contains the chart name. */}}
{{- define "ddm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", the suffix kept whole. */}}
{{- define "ddm.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "ddm.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "ddm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ddm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ddm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ddm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ddm-update-operator
{{- end }}

{{- define "ddm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ddm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ddm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The PersistentVolumeClaim the data directory lives on ("" without persistence). */}}
{{- define "ddm.claimName" -}}
{{- if .Values.persistence.enabled }}
{{- default (include "ddm.suffixed" (list . "data")) .Values.persistence.existingClaim }}
{{- end }}
{{- end }}

{{/*
A file from a ConfigMap or a Secret: (list "what" .source) with source {configMapName, secretName,
key}. Fails when both names are set; "" when neither is.
*/}}
{{- define "ddm.fileSource" -}}
{{- $what := index . 0 }}
{{- $source := index . 1 }}
{{- if and $source.configMapName $source.secretName }}
{{- fail (printf "%s: set configMapName or secretName, not both" $what) }}
{{- end }}
{{- if or $source.configMapName $source.secretName }}true{{ end }}
{{- end }}

{{/* A volume for a file source: (list "volume-name" .source). */}}
{{- define "ddm.fileVolume" -}}
{{- $name := index . 0 }}
{{- $source := index . 1 }}
- name: {{ $name }}
{{- if $source.secretName }}
  secret:
    secretName: {{ $source.secretName }}
    defaultMode: 0440
    items:
      - key: {{ $source.key }}
        path: {{ $source.key }}
{{- else }}
  configMap:
    name: {{ $source.configMapName }}
    defaultMode: 0440
    items:
      - key: {{ $source.key }}
        path: {{ $source.key }}
{{- end }}
{{- end }}
