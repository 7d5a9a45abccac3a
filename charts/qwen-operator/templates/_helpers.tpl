{{/* Names and labels shared by the templates. */}}

{{- define "qwen-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qwen-operator.fullname" -}}
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

{{- define "qwen-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qwen-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "qwen-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qwen-operator
{{- end -}}

{{- define "qwen-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qwen-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "qwen-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The RBAC rules of kube.API_CALLS; `cluster` selects the cluster-scoped ones. Keep in sync:
     tests/integration/test_chart.py compares these rules with operator/qwen_operator/kube.py. */}}
{{- define "qwen-operator.namespacedRules" -}}
- apiGroups: ["serving.qwenops.io"]
  resources: ["qwenservices"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["serving.qwenops.io"]
  resources: ["qwenservices/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["daemonsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["inference.networking.x-k8s.io"]
  resources: ["inferenceobjectives"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["inference.networking.x-k8s.io"]
  resources: ["inferencemodelrewrites"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "create", "patch", "delete"]
{{- end -}}

{{/* Namespaces where the operator may read the Secrets QwenServices name as Prometheus credentials:
     rbac.prometheusSecretNamespaces, else the watched namespaces. Never cluster-wide. */}}
{{- define "qwen-operator.secretNamespaces" -}}
{{- if .Values.rbac.prometheusSecrets -}}
{{- $namespaces := .Values.rbac.prometheusSecretNamespaces | default .Values.watchNamespaces -}}
{{- if not $namespaces -}}
{{- fail "rbac.prometheusSecrets: list the namespaces whose QwenServices may name Prometheus credentials in rbac.prometheusSecretNamespaces (Secret reads are never granted cluster-wide)" -}}
{{- end -}}
{{- join "," $namespaces -}}
{{- end -}}
{{- end -}}

{{- define "qwen-operator.ownNamespaceRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
{{- end -}}

{{- define "qwen-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end -}}

{{/* QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS: the entries for every namespace, then NAMESPACE=ENTRY. */}}
{{- define "qwen-operator.allowedServiceURLs" -}}
{{- $entries := list -}}
{{- range .Values.prometheus.allowedServiceURLs -}}
{{- $entries = append $entries . -}}
{{- end -}}
{{- range $namespace, $urls := .Values.prometheus.allowedServiceURLsByNamespace -}}
{{- range $urls -}}
{{- $entries = append $entries (printf "%s=%s" $namespace .) -}}
{{- end -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}

{{/* The chat page's default image (QWEN_OPERATOR_CHAT_UI_IMAGE), pinned like the operator's. */}}
{{- define "qwen-operator.chatUIImage" -}}
{{- with .Values.chatUI.image -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The router's default image (QWEN_OPERATOR_ROUTER_IMAGE), pinned like the operator's. */}}
{{- define "qwen-operator.routerImage" -}}
{{- with .Values.router.image -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) -}}
{{- end -}}
{{- end -}}
{{- end -}}
