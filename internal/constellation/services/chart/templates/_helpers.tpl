{{/* Labels of every object; the selector of a service's pods is the same pair. */}}
{{- define "constellation.labels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: constellation
{{- end }}

{{/* An image: the value, or the image of this chart's version. */}}
{{- define "constellation.image" -}}
{{- $name := index . 1 -}}
{{- $values := index . 0 -}}
{{- $set := index $values.Values.images (index . 2) -}}
{{- if $set }}{{ $set }}{{ else }}docker.io/constellation/{{ $name }}:{{ $values.Chart.AppVersion }}{{ end -}}
{{- end }}

{{/*
The pod-level part every service shares: the node's network (these are node agents, like kube-proxy, on
fixed ports), every taint tolerated, and a priority that keeps them scheduled.
*/}}
{{- define "constellation.nodePod" -}}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
priorityClassName: {{ . }}
tolerations:
  - operator: Exists
{{- end }}

{{- define "constellation.controlPlanesOnly" -}}
nodeSelector:
  node-role.kubernetes.io/control-plane: ""
{{- end }}

{{/*
In-cluster configuration, but with the API server on the pod's own node rather than the kubernetes
Service: that needs kube-proxy, which an upgrade restarts.
*/}}
{{- define "constellation.apiServerOnNode" -}}
- name: KUBERNETES_SERVICE_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: KUBERNETES_SERVICE_PORT
  value: "6443"
{{- end }}

{{- define "constellation.healthProbe" -}}
httpGet:
  {{- with .host }}
  host: {{ . }}
  {{- end }}
  path: /healthz
  port: {{ .port }}
periodSeconds: 10
{{- end }}

{{/* The node's TPM: a swtpm socket, whose directory is mounted so that a restarted swtpm's new socket is seen, or a device. */}}
{{- define "constellation.tpmIsDevice" -}}
{{- $tpm := required "attestation.tpm is required (swtpm:<socket> or device:<path>)" .Values.attestation.tpm -}}
{{- if hasPrefix "device:" $tpm }}true{{ else if hasPrefix "swtpm:" $tpm }}{{ else }}{{ fail (printf "attestation.tpm %q: expected swtpm:<socket> or device:<path>" $tpm) }}{{ end -}}
{{- end }}

{{- define "constellation.attestationArgs" -}}
- --variant={{ required "attestation.variant is required" .Values.attestation.variant }}
- --tpm={{ .Values.attestation.tpm }}
- --event-log={{ required "attestation.eventLog is required" .Values.attestation.eventLog }}
{{- end }}

{{/* The event log's directory, not the file: the node runtime replaces the file as boot progresses. */}}
{{- define "constellation.attestationMounts" -}}
- name: eventlog
  mountPath: {{ dir .Values.attestation.eventLog }}
  readOnly: true
{{- if include "constellation.tpmIsDevice" . }}
- name: tpm
  mountPath: {{ trimPrefix "device:" .Values.attestation.tpm }}
{{- else }}
- name: tpm
  mountPath: {{ trimPrefix "swtpm:" .Values.attestation.tpm | dir }}
{{- end }}
{{- end }}

{{- define "constellation.attestationVolumes" -}}
- name: eventlog
  hostPath:
    path: {{ dir .Values.attestation.eventLog }}
    type: Directory
{{- if include "constellation.tpmIsDevice" . }}
- name: tpm
  hostPath:
    path: {{ trimPrefix "device:" .Values.attestation.tpm }}
    type: CharDevice
{{- else }}
- name: tpm
  hostPath:
    path: {{ trimPrefix "swtpm:" .Values.attestation.tpm | dir }}
    type: Directory
{{- end }}
{{- end }}

{{/*
The TPM and the event log belong to root on every node (as securityfs' log does on real hosts); a device
node is only usable from a container that the device cgroup lets at it.
*/}}
{{- define "constellation.attestationSecurity" -}}
runAsUser: 0
runAsGroup: 0
{{- if include "constellation.tpmIsDevice" . }}
privileged: true
{{- end }}
{{- end }}

{{/* The host directory of the KeyService's socket, which only the KeyService and the JoinService mount. */}}
{{- define "constellation.keyServiceSocketVolume" -}}
- name: keyservice-socket
  hostPath:
    path: /run/constellation/keyservice
    type: DirectoryOrCreate
{{- end }}

{{- define "constellation.keyServiceSocketMount" -}}
- name: keyservice-socket
  mountPath: /run/constellation/keyservice
{{- end }}

{{/* A ServiceAccount with a Role of the given rules in the release's namespace, bound to it. */}}
{{- define "constellation.account" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "constellation.labels" .name | nindent 4 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "constellation.labels" .name | nindent 4 }}
rules: {{ .rules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "constellation.labels" .name | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ .namespace }}
{{- end }}

{{/* A ClusterRole of the given rules, bound to a ServiceAccount in the release's namespace. */}}
{{- define "constellation.clusterRole" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .role }}
  labels:
    {{- include "constellation.labels" .account | nindent 4 }}
rules: {{ .rules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .role }}
  labels:
    {{- include "constellation.labels" .account | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .role }}
subjects:
  - kind: ServiceAccount
    name: {{ .account }}
    namespace: {{ .namespace }}
{{- end }}

{{/* Whether the KeyService uses a user-managed KMS: any backend but the master secret's. */}}
{{- define "constellation.userManagedKeys" -}}
{{- if ne (urlParse .Values.kmsURI).host "cluster-kms" }}true{{ end -}}
{{- end }}
