{{/* The name of every object (the release name, as kustomize's svcnat). */}}
{{- define "svcnat.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object: the selector label and Helm's own two. */}}
{{- define "svcnat.labels" -}}
app.kubernetes.io/name: {{ include "svcnat.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image of both containers. */}}
{{- define "svcnat.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}
