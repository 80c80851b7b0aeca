{{/* Release-scoped base name, at most 40 chars so "-<service>-migrate" (at most 18) still fits 63. */}}
{{- define "loyalty.fullname" -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "loyalty.labels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loyalty-suite
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- range $k, $v := .Values.commonLabels }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* Labels for one service's resources; call with (dict "root" $ "service" "tiers"). */}}
{{- define "loyalty.serviceLabels" -}}
{{ include "loyalty.labels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "loyalty.selectorLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{/* The generated topic catalogue (deploy/gen_topics.py) as a dict: services, topics. */}}
{{- define "loyalty.catalogue" -}}
{{- $raw := .Files.Get "files/catalogue.generated.yaml" -}}
{{- if not $raw -}}
{{- fail "files/catalogue.generated.yaml is missing: run `uv run python deploy/gen_topics.py`" -}}
{{- end -}}
{{- $raw -}}
{{- end -}}

{{- define "loyalty.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "loyalty.kafkaUser" -}}
{{- printf "%s-%s" (include "loyalty.fullname" .root) .service -}}
{{- end -}}

{{- define "loyalty.consumerGroup" -}}
{{- printf "%s%s" .root.Values.kafka.consumerGroupPrefix .service -}}
{{- end -}}

{{- define "loyalty.kafkaBootstrap" -}}
{{- if .Values.kafka.bootstrapServers -}}
{{- .Values.kafka.bootstrapServers -}}
{{- else -}}
{{- printf "%s-kafka-bootstrap:%s" .Values.kafka.clusterName (ternary "9093" "9092" .Values.kafka.tls.enabled) -}}
{{- end -}}
{{- end -}}

{{- define "loyalty.kafkaCaSecret" -}}
{{- default (printf "%s-cluster-ca-cert" .Values.kafka.clusterName) .Values.kafka.tls.caSecretName -}}
{{- end -}}

{{- define "loyalty.pgCluster" -}}
{{- default (printf "%s-pg" (include "loyalty.fullname" .)) .Values.postgres.cnpg.clusterName -}}
{{- end -}}

{{- define "loyalty.pgHost" -}}
{{- if .Values.postgres.host -}}
{{- .Values.postgres.host -}}
{{- else if .Values.postgres.cnpg.enabled -}}
{{- printf "%s-rw" (include "loyalty.pgCluster" .) -}}
{{- else -}}
{{- fail "postgres.host is required when postgres.cnpg.enabled is false" -}}
{{- end -}}
{{- end -}}

{{- define "loyalty.programsConfigMap" -}}
{{- default (printf "%s-programs" (include "loyalty.fullname" .)) .Values.programs.existingConfigMap -}}
{{- end -}}

{{/* Kafka client security protocol for the configured listener. */}}
{{- define "loyalty.kafkaProtocol" -}}
{{- $auth := .Values.kafka.authentication -}}
{{- if eq $auth "scram-sha-512" -}}{{ ternary "SASL_SSL" "SASL_PLAINTEXT" .Values.kafka.tls.enabled }}
{{- else if eq $auth "tls" -}}SSL
{{- else -}}{{ ternary "SSL" "PLAINTEXT" .Values.kafka.tls.enabled }}
{{- end -}}
{{- end -}}

{{/*
Environment shared by a service's Deployment and its migrations Job; call with (dict "root" $ "service" s),
adding "migrationsOnly" true for the Job, which needs Postgres but not Kafka.
Passwords come from Secrets by reference: PGPASSWORD (libpq/asyncpg read it when the DSN has none) and the
Strimzi-generated KafkaUser secret.
*/}}
{{- define "loyalty.env" -}}
{{- $root := .root -}}
{{- $svc := .service -}}
{{- $cfg := index $root.Values.services $svc -}}
- name: LOYALTY_SERVICE
  value: {{ $svc | quote }}
- name: LOYALTY_HTTP_PORT
  value: "8080"
- name: LOYALTY_PROGRAMS_DIR
  value: /etc/loyalty/programs
{{- if not .migrationsOnly }}
- name: LOYALTY_KAFKA_BOOTSTRAP
  value: {{ include "loyalty.kafkaBootstrap" $root | quote }}
- name: LOYALTY_CONSUMER_GROUP
  value: {{ include "loyalty.consumerGroup" . | quote }}
# Topics belong to Strimzi (KafkaTopic resources); the services' users have no Create ACL.
- name: LOYALTY_CREATE_TOPICS
  value: "false"
- name: LOYALTY_KAFKA_SECURITY_PROTOCOL
  value: {{ include "loyalty.kafkaProtocol" $root | quote }}
{{- if eq $root.Values.kafka.authentication "scram-sha-512" }}
- name: LOYALTY_KAFKA_SASL_MECHANISM
  value: SCRAM-SHA-512
- name: LOYALTY_KAFKA_SASL_USERNAME
  value: {{ include "loyalty.kafkaUser" . | quote }}
- name: LOYALTY_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "loyalty.kafkaUser" . }}
      key: password
{{- end }}
{{- if $root.Values.kafka.tls.enabled }}
- name: LOYALTY_KAFKA_SSL_CAFILE
  value: /etc/loyalty/kafka-ca/ca.crt
{{- end }}
{{- if eq $root.Values.kafka.authentication "tls" }}
- name: LOYALTY_KAFKA_SSL_CERTFILE
  value: /etc/loyalty/kafka-user/user.crt
- name: LOYALTY_KAFKA_SSL_KEYFILE
  value: /etc/loyalty/kafka-user/user.key
{{- end }}
{{- end }}{{/* not migrationsOnly */}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $cfg.database.passwordSecret }}
      key: password
- name: LOYALTY_PG_DSN
  value: {{ printf "postgresql://%s@%s:%d/%s?sslmode=%s" $svc (include "loyalty.pgHost" $root) (int $root.Values.postgres.port) $root.Values.postgres.database $root.Values.postgres.sslmode | quote }}
{{- with $root.Values.observability.otel.endpoint }}
- name: LOYALTY_OTEL_EXPORTER_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "loyalty-%s" $svc | quote }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
# Read by the OpenTelemetry SDK's resource detector: spans say which pod they came from.
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
{{- range $name, $value := $cfg.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- range $cfg.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{/* Secret volumes for Kafka TLS, shared by Deployment and Job. */}}
{{- define "loyalty.kafkaVolumes" -}}
{{- if .root.Values.kafka.tls.enabled }}
- name: kafka-ca
  secret:
    secretName: {{ include "loyalty.kafkaCaSecret" .root }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- if eq .root.Values.kafka.authentication "tls" }}
- name: kafka-user
  secret:
    secretName: {{ include "loyalty.kafkaUser" . }}
    items:
      - key: user.crt
        path: user.crt
      - key: user.key
        path: user.key
{{- end }}
{{- end -}}

{{- define "loyalty.kafkaVolumeMounts" -}}
{{- if .root.Values.kafka.tls.enabled }}
- name: kafka-ca
  mountPath: /etc/loyalty/kafka-ca
  readOnly: true
{{- end }}
{{- if eq .root.Values.kafka.authentication "tls" }}
- name: kafka-user
  mountPath: /etc/loyalty/kafka-user
  readOnly: true
{{- end }}
{{- end -}}

{{/* Smallest partition count among the topics a service consumes: its useful replica ceiling. */}}
{{- define "loyalty.maxUsefulReplicas" -}}
{{- $catalogue := include "loyalty.catalogue" .root | fromYaml -}}
{{- $min := 0 -}}
{{- range $catalogue.topics -}}
{{- if has $.service .consumers -}}
{{- if or (eq $min 0) (lt (int .partitions) $min) -}}{{- $min = int .partitions -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- $min -}}
{{- end -}}
