{{/* Full name of the release's objects. */}}
{{- define "etha.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "etha.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etha.labels" -}}
{{ include "etha.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "etha.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "etha.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches: empty means all (cluster scope only). */}}
{{- define "etha.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson .Values.watchNamespaces -}}
{{- else if eq .Values.rbac.scope "namespaced" -}}
{{- toJson (list .Release.Namespace) -}}
{{- else -}}
{{- toJson (list) -}}
{{- end -}}
{{- end -}}

{{/* The operator's rules: exactly the verbs and resources it uses (tests check both ways). */}}
{{- define "etha.rules" -}}
# The operator watches its jobs and, once per kind, their children (kopf indexes them by owner).
- apiGroups: ["etha.io"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["etha.io"]
  resources: ["trainingjobs/status"]
  verbs: ["patch"]
# patch: a pod of the job whose job label someone removed gets it back (never another's pod).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# Services and NetworkPolicies are kept across attempts: patched when the job's spec changes them.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# restartStrategy InPlace: one ConfigMap per job carries the agent (created, read when it exists).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create"]
{{- if .Values.networkPolicy.enabled }}
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end }}
{{- $gangs := append (.Values.scheduling.gangs | default list) .Values.scheduling.gang }}
{{- if or (has "coscheduling" $gangs) (has "volcano" $gangs) }}
# While a gang waits: what the scheduler said of its pods (a member's own condition is
# overwritten when it is rejected with the rest).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
{{- end }}
{{- if has "coscheduling" $gangs }}
# One PodGroup per attempt (scheduler-plugins' Coscheduling): made, read while pods wait, and
# the previous attempt's deleted.
- apiGroups: ["scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "create", "delete"]
{{- end }}
{{- if has "volcano" $gangs }}
- apiGroups: ["scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create", "delete"]
{{- end }}
{{- if eq .Values.kueue.mode "Workload" }}
# Kueue admits a labelled job's own Workload: made (read when one of its name exists), watched
# (its admission wakes the job), deactivated while the job is suspended (patch), replaced when
# stale; its status written as Kueue's jobframework does (Finished, quota released, PodsReady).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
{{- end }}
{{- end -}}

{{/* Kueue in Workload mode, cluster-scoped and read-only: the ResourceFlavors an admission names
(their node labels and tolerations go on the pods) and a new Workload's priority (Kueue's
WorkloadPriorityClasses; PriorityClasses, listed for the cluster's default). */}}
{{- define "etha.kueueClusterRules" -}}
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["resourceflavors", "workloadpriorityclasses"]
  verbs: ["get"]
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["get", "list"]
{{- end -}}

{{- define "etha.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "etha.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) -}}
{{- end -}}
