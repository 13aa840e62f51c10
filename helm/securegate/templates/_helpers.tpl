{{/* Names */}}
{{- define "securegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "securegate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>, at most 63 characters. Call with (list $ "edge"). */}}
{{- define "securegate.component" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "securegate.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "securegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "securegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component. Call with (list $ "edge"). */}}
{{- define "securegate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "securegate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "securegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Service accounts */}}
{{- define "securegate.kmsServiceAccount" -}}
{{- default (include "securegate.component" (list . "kms")) .Values.serviceAccounts.kms.name -}}
{{- end -}}

{{- define "securegate.unprivilegedServiceAccount" -}}
{{- default (include "securegate.fullname" .) .Values.serviceAccounts.unprivileged.name -}}
{{- end -}}

{{/* Secret names */}}
{{- define "securegate.postgresSecret" -}}
{{- default (include "securegate.component" (list . "postgres")) .Values.postgres.existingSecret.name -}}
{{- end -}}

{{- define "securegate.adminSecret" -}}
{{- default (include "securegate.component" (list . "admin")) .Values.admin.existingSecret.name -}}
{{- end -}}

{{- define "securegate.attestationKeySecret" -}}
{{- default (include "securegate.component" (list . "attestation-key")) .Values.attestation.existingPrivateKeySecret.name -}}
{{- end -}}

{{- define "securegate.attestationPubSecret" -}}
{{- default (include "securegate.component" (list . "attestation-pub")) .Values.attestation.existingPublicKeySecret.name -}}
{{- end -}}

{{- define "securegate.masterKeySecret" -}}
{{- default (include "securegate.component" (list . "master-key")) .Values.kms.local.existingSecret.name -}}
{{- end -}}

{{/* Pod and container security */}}
{{- define "securegate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "securegate.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod annotations: scrape annotations and the component's own. Call with (list $ port extra). */}}
{{- define "securegate.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $annotations := dict -}}
{{- if $root.Values.metrics.scrapeAnnotations -}}
{{- $_ := set $annotations "prometheus.io/scrape" "true" -}}
{{- $_ := set $annotations "prometheus.io/port" (index . 1 | toString) -}}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $annotations = merge (deepCopy (index . 2)) $annotations -}}
{{- if $annotations -}}
annotations:
  {{- toYaml $annotations | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Environment every process gets. Call with (list $ "edge"). */}}
{{- define "securegate.commonEnv" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
- name: SECUREGATE_LOG_FORMAT
  value: {{ $root.Values.logFormat | quote }}
{{- with $root.Values.rustLog }}
- name: RUST_LOG
  value: {{ . | quote }}
{{- end }}
- name: SECUREGATE_NATS_URL
{{- if $root.Values.nats.existingSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.nats.existingSecret.name }}
      key: {{ $root.Values.nats.existingSecret.key }}
{{- else }}
  value: {{ required "nats.url or nats.existingSecret.name is required" $root.Values.nats.url | quote }}
{{- end }}
- name: SECUREGATE_NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with $root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_SERVICE_NAME
  value: {{ printf "%s-%s" $root.Values.otel.serviceNamePrefix $component | quote }}
{{- end }}
{{- end -}}

{{/* KMS flags (the processes that open or seal keys). Call with (list $ seal). */}}
{{- define "securegate.kmsArgs" -}}
{{- $root := index . 0 -}}
- --kms={{ $root.Values.kms.provider }}
{{- if eq $root.Values.kms.provider "aws" }}
{{- if index . 1 }}
- --kms-key-id={{ required "kms.keyId is required with kms.provider aws" $root.Values.kms.keyId }}
{{- end }}
{{- else }}
- --master-key-file=/etc/securegate/kms/master.key
{{- end }}
{{- end -}}

{{- define "securegate.kmsEnv" -}}
{{- if eq .Values.kms.provider "aws" }}
{{- with .Values.kms.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kms.endpoint }}
- name: AWS_ENDPOINT_URL_KMS
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "securegate.kmsVolumeMounts" -}}
{{- if eq .Values.kms.provider "local" }}
- name: master-key
  mountPath: /etc/securegate/kms
  readOnly: true
{{- end }}
{{- end -}}

{{- define "securegate.kmsVolumes" -}}
{{- if eq .Values.kms.provider "local" }}
- name: master-key
  secret:
    secretName: {{ include "securegate.masterKeySecret" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.kms.local.existingSecret.key }}
        path: master.key
{{- end }}
{{- end -}}

{{/* Probes on a named port. Call with (dict "port" "http"). */}}
{{- define "securegate.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{/* Scheduling fields of one component's values. */}}
{{- define "securegate.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
