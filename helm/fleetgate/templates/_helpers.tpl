{{/*
Names, labels and the checks that refuse a configuration fleetgate cannot run
with. Kept in one place so every template fails the same way.
*/}}

{{- define "fleetgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fleetgate.fullname" -}}
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

{{- define "fleetgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fleetgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fleetgate.labels" -}}
helm.sh/chart: {{ include "fleetgate.chart" . }}
{{ include "fleetgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetgate
{{- end }}

{{- define "fleetgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fleetgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fleetgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* The Secret this chart creates (holds whatever is set from values). */}}
{{- define "fleetgate.secretName" -}}
{{- include "fleetgate.fullname" . }}
{{- end }}

{{- define "fleetgate.redisEnabled" -}}
{{- if or .Values.redis.existingSecret .Values.redis.url .Values.redis.clusterNodes .Values.redis.sentinel.nodes }}true{{ end }}
{{- end }}

{{- define "fleetgate.jwtUsesKey" -}}
{{- if ne .Values.jwt.algorithm "HS256" }}true{{ end }}
{{- end }}

{{/* Whether the chart's own Secret has anything to hold. */}}
{{- define "fleetgate.createSecret" -}}
{{- $redis := and (or .Values.redis.url .Values.redis.clusterNodes) (not .Values.redis.existingSecret) }}
{{- $jwt := and (not .Values.jwt.existingSecret) (or .Values.jwt.secret .Values.jwt.publicKey .Values.jwt.privateKey) }}
{{- $mqtt := and .Values.devices.mqtt.url (not .Values.devices.mqtt.existingSecret) }}
{{- $nats := and .Values.nats.url (not .Values.nats.existingSecret) }}
{{- if or $redis $jwt $mqtt $nats }}true{{ end }}
{{- end }}

{{/*
FLEETGATE_* variables set from `config`: value key -> variable. Also the list
of names extraEnv may not repeat.
*/}}
{{- define "fleetgate.configEnvNames" -}}
log: FLEETGATE_LOG
logFormat: FLEETGATE_LOG_FORMAT
shutdownGraceSecs: FLEETGATE_SHUTDOWN_GRACE_SECS
socketioPath: FLEETGATE_SOCKETIO_PATH
batchMs: FLEETGATE_BATCH_MS
redisPoolSize: FLEETGATE_REDIS_POOL_SIZE
jwtLeewaySecs: FLEETGATE_JWT_LEEWAY_SECS
authTimeoutSecs: FLEETGATE_AUTH_TIMEOUT_SECS
sessionTtlSecs: FLEETGATE_SESSION_TTL_SECS
maxFutureMs: FLEETGATE_MAX_FUTURE_MS
maxAgeMs: FLEETGATE_MAX_AGE_MS
locationTtlSecs: FLEETGATE_LOCATION_TTL_SECS
staleAfterSecs: FLEETGATE_STALE_AFTER_SECS
presenceTtlSecs: FLEETGATE_PRESENCE_TTL_SECS
historyMax: FLEETGATE_HISTORY_MAX
historyTtlSecs: FLEETGATE_HISTORY_TTL_SECS
eventsMax: FLEETGATE_EVENTS_MAX
webhookRetrySecs: FLEETGATE_WEBHOOK_RETRY_SECS
webhookAllowPrivate: FLEETGATE_WEBHOOK_ALLOW_PRIVATE
webhookTimeoutSecs: FLEETGATE_WEBHOOK_TIMEOUT_SECS
webhookConcurrency: FLEETGATE_WEBHOOK_CONCURRENCY
outputLeaseSecs: FLEETGATE_OUTPUT_LEASE_SECS
maxRooms: FLEETGATE_MAX_ROOMS
maxSubscriptions: FLEETGATE_MAX_SUBSCRIPTIONS
maxMessageBytes: FLEETGATE_MAX_MESSAGE_BYTES
socketBuffer: FLEETGATE_SOCKET_BUFFER
slowViewerSecs: FLEETGATE_SLOW_VIEWER_SECS
writeTimeoutSecs: FLEETGATE_WRITE_TIMEOUT_SECS
pingIntervalSecs: FLEETGATE_PING_INTERVAL_SECS
pingTimeoutSecs: FLEETGATE_PING_TIMEOUT_SECS
writeWindowMs: FLEETGATE_WRITE_WINDOW_MS
rateEventsPerSec: FLEETGATE_RATE_EVENTS_PER_SEC
rateVehiclePerSec: FLEETGATE_RATE_VEHICLE_PER_SEC
maxConnections: FLEETGATE_MAX_CONNECTIONS
maxConnectionsPerIp: FLEETGATE_MAX_CONNECTIONS_PER_IP
clientIpHeader: FLEETGATE_CLIENT_IP_HEADER
{{- end }}

{{- define "fleetgate.managedEnvNames" -}}
{{- $names := values (include "fleetgate.configEnvNames" . | fromYaml) }}
{{- $names = concat $names (list "FLEETGATE_ADDR" "FLEETGATE_METRICS_ADDR" "FLEETGATE_CORS_ORIGINS" "FLEETGATE_REDIS_URL" "FLEETGATE_JWT_SECRET" "FLEETGATE_JWT_SECRETS" "FLEETGATE_JWT_KEYS_DIR" "FLEETGATE_JWT_PUBLIC_KEY_FILE" "FLEETGATE_JWT_PRIVATE_KEY_FILE" "FLEETGATE_JWT_ISSUER" "FLEETGATE_JWT_AUDIENCE" "FLEETGATE_JWT_JWKS_URL" "FLEETGATE_JWT_JWKS_REFRESH_SECS" "FLEETGATE_DEMO" "FLEETGATE_DEMO_VEHICLES") }}
{{- $names = concat $names (list "FLEETGATE_OSMAND_ADDR" "FLEETGATE_OSMAND_MAX_CONNECTIONS" "FLEETGATE_OSMAND_IDLE_TIMEOUT_SECS" "FLEETGATE_MQTT_URL" "FLEETGATE_MQTT_FLEETS" "FLEETGATE_MQTT_TLS_CA_FILE") }}
{{- $names = concat $names (list "FLEETGATE_NATS_URL" "FLEETGATE_NATS_STREAM") }}
{{- toJson $names }}
{{- end }}

{{/*
A number as the binary expects it. Values arrive as float64 when they come from
YAML or JSON, and large ones would otherwise print as 6.048e+08.
*/}}
{{- define "fleetgate.scalar" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{- define "fleetgate.terminationGracePeriodSeconds" -}}
{{- $floor := add (int64 .Values.lifecycle.preStopSleepSeconds) (int64 .Values.config.shutdownGraceSecs) }}
{{- if kindIs "invalid" .Values.lifecycle.terminationGracePeriodSeconds }}
{{- add $floor (int64 .Values.lifecycle.terminationGraceMarginSeconds) }}
{{- else }}
{{- $set := int64 .Values.lifecycle.terminationGracePeriodSeconds }}
{{- if le $set $floor }}
{{- fail (printf "lifecycle.terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.shutdownGraceSecs (%d), or pods are killed mid-drain" $set $floor) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/* Every refusal, evaluated once from the Deployment. */}}
{{- define "fleetgate.validate" -}}
{{- $redis := include "fleetgate.redisEnabled" . }}
{{- if and (not $redis) (or (gt (int64 .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "replicaCount > 1 or autoscaling.enabled needs Redis (redis.url, redis.clusterNodes, redis.sentinel.nodes or redis.existingSecret): replicas without Redis do not share sessions, positions or rooms" }}
{{- end }}
{{- if and .Values.redis.sentinel.nodes (or .Values.redis.url .Values.redis.clusterNodes .Values.redis.existingSecret) }}
{{- fail "set redis.sentinel.nodes (Redis through Sentinel) or redis.url / redis.clusterNodes / redis.existingSecret, not both" }}
{{- end }}
{{- if and .Values.redis.sentinel.nodes (not .Values.redis.sentinel.masterSet) }}
{{- fail "redis.sentinel.nodes needs redis.sentinel.masterSet (the Sentinels' master set name, e.g. mymaster)" }}
{{- end }}
{{- if and .Values.redis.tls.existingSecret (not (or .Values.redis.tls.caKey .Values.redis.tls.certKey)) }}
{{- fail "redis.tls.existingSecret needs redis.tls.caKey and/or redis.tls.certKey + redis.tls.keyKey" }}
{{- end }}
{{- if ne (empty .Values.redis.tls.certKey) (empty .Values.redis.tls.keyKey) }}
{{- fail "redis.tls.certKey and redis.tls.keyKey go together (mutual TLS)" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.clusterNodes (not .Values.redis.existingSecret) }}
{{- fail "set redis.url (one Redis) or redis.clusterNodes (a Redis Cluster), not both" }}
{{- end }}
{{- $rotation := or .Values.jwt.rotatingSecrets.existingSecret .Values.jwt.keysDir.existingSecret }}
{{- if .Values.demo.enabled }}
{{- if or (gt (int64 .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "demo.enabled generates a signing key per process: run it with replicaCount 1 and without autoscaling" }}
{{- end }}
{{- if $rotation }}
{{- fail "demo.enabled cannot be combined with jwt.rotatingSecrets or jwt.keysDir: the demo token endpoint mints for anyone and must never sign with real keys (fleetgate refuses to start so)" }}
{{- end }}
{{- if .Values.jwt.jwksUrl }}
{{- fail "demo.enabled mints tokens that a server trusting jwt.jwksUrl would accept alongside the provider's: run the demo without jwt.jwksUrl" }}
{{- end }}
{{- else if .Values.jwt.existingSecret }}
{{- if and (include "fleetgate.jwtUsesKey" .) (not .Values.jwt.existingSecretKeys.publicKey) }}
{{- fail (printf "jwt.algorithm %s with jwt.existingSecret needs jwt.existingSecretKeys.publicKey" .Values.jwt.algorithm) }}
{{- end }}
{{- if and (not (include "fleetgate.jwtUsesKey" .)) (not .Values.jwt.existingSecretKeys.secret) }}
{{- fail "jwt.algorithm HS256 with jwt.existingSecret needs jwt.existingSecretKeys.secret" }}
{{- end }}
{{- else if include "fleetgate.jwtUsesKey" . }}
{{- if not (or .Values.jwt.publicKey .Values.jwt.keysDir.existingSecret) }}
{{- fail (printf "jwt.algorithm %s needs jwt.publicKey (PEM), jwt.existingSecret or jwt.keysDir.existingSecret" .Values.jwt.algorithm) }}
{{- end }}
{{- if .Values.jwt.secret }}
{{- fail (printf "jwt.secret is an HS256 secret but jwt.algorithm is %s: set one or the other" .Values.jwt.algorithm) }}
{{- end }}
{{- else }}
{{- if not (or .Values.jwt.secret $rotation .Values.jwt.jwksUrl) }}
{{- fail "fleetgate refuses to start without a token key: set jwt.secret (HS256), jwt.algorithm=RS256|ES256 with jwt.publicKey, jwt.existingSecret, jwt.rotatingSecrets.existingSecret, jwt.keysDir.existingSecret, jwt.jwksUrl (an identity provider's JWKS), or demo.enabled=true" }}
{{- end }}
{{- if or .Values.jwt.publicKey .Values.jwt.privateKey }}
{{- fail "jwt.publicKey/jwt.privateKey are PEM keys for RS256/ES256: set jwt.algorithm accordingly" }}
{{- end }}
{{- end }}
{{- $managed := include "fleetgate.managedEnvNames" . | fromJsonArray }}
{{- range .Values.extraEnv }}
{{- if has .name $managed }}
{{- fail (printf "extraEnv sets %s, which the chart sets from its values: use the matching value (see values.yaml) instead" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* topologySpreadConstraints with this release's pods selected by default. */}}
{{- define "fleetgate.topologySpreadConstraints" -}}
{{- $selector := include "fleetgate.selectorLabels" . | fromYaml }}
{{- $out := list }}
{{- range .Values.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- if not (hasKey $c "matchLabelKeys") }}
{{- $_ := set $c "matchLabelKeys" (list "pod-template-hash") }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}
