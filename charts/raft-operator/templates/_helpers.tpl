{{/* Names, labels and the shared RBAC rules of the raft-operator chart. */}}

{{- define "raft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "raft-operator.fullname" -}}
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

{{- define "raft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "raft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "raft-operator.labels" -}}
helm.sh/chart: {{ include "raft-operator.chart" . }}
{{ include "raft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: raft-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "raft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "raft-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "raft-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Leader election is on when asked for, and must be when more than one replica runs: two
reconcilers without a Lease would both act on the same RaftCluster.
*/}}
{{- define "raft-operator.leaderElect" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "leaderElection.enabled: must be true when replicaCount is %d (> 1); two operators without leader election would act on the same RaftCluster at once" (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.leaderElection.enabled }}true{{ end }}
{{- end }}

{{/*
Rules for the resources the operator manages inside a watched namespace (or in every namespace,
when watchNamespaces is empty). Only the verbs the operator uses.
*/}}
{{- define "raft-operator.managerRules" -}}
# Each member is its own Pod (no StatefulSet), with its own PVC.
- apiGroups: [""]
  resources: [pods, persistentvolumeclaims]
  verbs: [get, list, watch, create, delete, patch]
# Members are restarted through the Eviction API, so their PodDisruptionBudget applies.
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# Headless peer Service and client Service per cluster.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [raft-operator.dev]
  resources: [raftclusters]
  verbs: [get, list, watch, patch, update]
- apiGroups: [raft-operator.dev]
  resources: [raftclusters/status]
  verbs: [get, patch, update]
- apiGroups: [raft-operator.dev]
  resources: [raftclusters/finalizers]
  verbs: [update]
- apiGroups: [raft-operator.dev]
  resources: [raftrecoveries]
  verbs: [get, list, watch, patch, update]
- apiGroups: [raft-operator.dev]
  resources: [raftrecoveries/status]
  verbs: [get, patch, update]
{{- end }}
