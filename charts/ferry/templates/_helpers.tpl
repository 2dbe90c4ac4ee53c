{{/*
Names are fixed, not prefixed by the release: the RBAC in files/rbac (the
same files the e2e tests run each component under) names the service
accounts and Secrets, and the MutatingWebhookConfiguration's name is what
ferry's code looks for. One ferry per cluster.
*/}}

{{- define "ferry.labels" -}}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Labels of one component; call with (list $ "operator"). */}}
{{- define "ferry.componentLabels" -}}
{{ include "ferry.labels" (index . 0) }}
{{ include "ferry.selectorLabels" . }}
{{- end }}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: ferry-{{ index . 1 }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* An image of ferry's; call with (list $ "ferry-operator"). */}}
{{- define "ferry.image" -}}
{{- $ := index . 0 -}}
{{- printf "%s/%s:%s" $.Values.image.repository (index . 1) ($.Values.image.tag | default $.Chart.AppVersion) -}}
{{- end }}

{{- define "ferry.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
# The TLS Secret's files (mode 0440) belong to this group, so the
# non-root process can read them.
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ferry.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Spread replicas over nodes: a node going away takes one replica. */}}
{{- define "ferry.antiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
  - weight: 100
    podAffinityTerm:
      topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "ferry.selectorLabels" . | nindent 10 }}
{{- end }}

{{- define "ferry.podNamespaceEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- with .Values.kubernetesApi.host }}
{{- /* The kubelet sets these from the `kubernetes` Service; a container's own env wins. */}}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $.Values.kubernetesApi.port | quote }}
{{- end }}
{{- end }}

{{/* The JWT issuer allow-list, as the operator and the broker both read it:
comma-separated namespace=issuer entries. */}}
{{- define "ferry.allowedIssuersEnv" -}}
{{- $entries := list -}}
{{- range $namespace, $issuers := .Values.allowedIssuers -}}
{{- range $issuers -}}
{{- $entries = append $entries (printf "%s=%s" $namespace .) -}}
{{- end -}}
{{- end -}}
- name: FERRY_ALLOWED_ISSUERS
  value: {{ join "," $entries | quote }}
{{- end }}

{{- define "ferry.adminProbes" -}}
livenessProbe:
  httpGet: {path: /livez, port: admin}
  periodSeconds: 10
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
{{- end }}

{{/* The DNS names a Service's certificate covers (as the operator issues them). */}}
{{- define "ferry.dnsNames" -}}
{{- $ := index . 0 -}}
{{- $svc := index . 1 -}}
- {{ $svc }}
- {{ $svc }}.{{ $.Release.Namespace }}
- {{ $svc }}.{{ $.Release.Namespace }}.svc
- {{ $svc }}.{{ $.Release.Namespace }}.svc.{{ $.Values.clusterDomain }}
{{- end }}

{{- define "ferry.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
