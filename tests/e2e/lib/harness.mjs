// The end-to-end tests' one import point: a private redis-server (or Redis
// Cluster) and real fleetgate processes on free ports, the fixtures that
// start them for a file or a suite, tokens, and the official
// socket.io-client wrapped in promise helpers. Every process and socket it
// creates is stopped in `after()` hooks and, as a last resort, when the
// test process exits. The modules beside it say where each part lives.

export { freePort, stopChild, trackChild } from "./processes.mjs";
export { sleep, until } from "./wait.mjs";
export { redisCli, startRedis } from "./redis.mjs";
export { clusterMode, startRedisCluster, startSharedRedis } from "./redis-cluster.mjs";
export { BIN, fleetgateServer, serverLogs, startServer, test } from "./server.mjs";
export { deployment, startCluster } from "./deployment.mjs";
export { failoverProxy, startProxy } from "./proxy.mjs";
export { singleNode, twoReplicas, useDeployment, useProxy, useServer } from "./fixtures.mjs";
export { noneToken, nowSecs, signToken, wrongSecretToken } from "./tokens.mjs";
export {
  NAMESPACE,
  closeAllSockets,
  connect,
  connectError,
  connectWithSession,
  emitWithAck,
  expectNoEvent,
  openSocket,
  record,
  waitForDisconnect,
  waitForEvent,
} from "./sockets.mjs";
export { expectError, expectOk } from "./envelopes.mjs";
export { answersOk, httpRequest, readResponse } from "./http.mjs";
export { assertLocationShape, byVehicle, near, publish, publishAccepted, subscribe, tsAt, uid } from "./fleet.mjs";
