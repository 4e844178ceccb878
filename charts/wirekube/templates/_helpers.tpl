{{/* The image tag: image.tag, else v<appVersion>. */}}
{{- define "wirekube.tag" -}}
{{- .Values.image.tag | default (printf "v%s" .Chart.AppVersion) -}}
{{- end -}}

{{- define "wirekube.image" -}}
{{- printf "%s/wirekube-%s:%s" .root.Values.image.registry .name (include "wirekube.tag" .root) -}}
{{- end -}}

{{/* Labels on every object; kustomize's config/ carries the part-of label only. */}}
{{- define "wirekube.labels" -}}
app.kubernetes.io/part-of: wirekube
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
