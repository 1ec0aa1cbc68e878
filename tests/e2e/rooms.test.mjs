// Rooms and dispatch chat (contract 6): `join_room` / `leave_room` with
// `notice` to the other members, room-name validation, `chat` delivered once
// to the other members on every replica, `history` (order, limit, before, the
// FLEETGATE_HISTORY_MAX cap, shared through Redis), membership checks, and
// rooms scoped to their fleet. Ends with a smoke test on one in-memory node.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  connect,
  connectWithSession,
  emitWithAck,
  expectError,
  expectOk,
  record,
  singleNode,
  sleep,
  test,
  twoReplicas,
  uid,
  waitForEvent,
} from "./lib/harness.mjs";

const HISTORY_MAX = 5;
/** Time for events in flight to arrive before counting them. */
const SETTLE_MS = 500;

/** A connected member-to-be: socket, its sub, and everything it receives. */
async function member(cluster, server, fleet, { sub = uid("user"), role = "dispatcher" } = {}) {
  const { socket } = await connectWithSession(server, cluster.token({ sub, fleet, role }));
  return { socket, sub, notices: record(socket, "notice"), chats: record(socket, "chat") };
}

async function join(m, room) {
  const data = expectOk(await emitWithAck(m.socket, "join_room", { room }), `${m.sub} join_room ${room}`);
  assert.equal(data.room, room, `join_room ack: ${JSON.stringify(data)}`);
  return data;
}

async function leave(m, room) {
  const data = expectOk(await emitWithAck(m.socket, "leave_room", { room }), `${m.sub} leave_room ${room}`);
  assert.equal(data.room, room, `leave_room ack: ${JSON.stringify(data)}`);
  return data;
}

async function say(m, room, text) {
  return expectOk(await emitWithAck(m.socket, "chat", { room, text }), `${m.sub} chat in ${room}`);
}

async function history(m, request) {
  const data = expectOk(await emitWithAck(m.socket, "history", request), `${m.sub} history ${JSON.stringify(request)}`);
  assert.ok(Array.isArray(data.messages), `history ack must carry messages: ${JSON.stringify(data)}`);
  return data.messages;
}

function assertMessage(msg, { room, from, text, since }) {
  assert.ok(msg && typeof msg === "object", `message must be an object: ${JSON.stringify(msg)}`);
  assert.equal(typeof msg.id, "string", `id must be a string: ${JSON.stringify(msg)}`);
  assert.ok(msg.id.length > 0, `id must not be empty: ${JSON.stringify(msg)}`);
  assert.equal(msg.room, room, `room in ${JSON.stringify(msg)}`);
  assert.equal(msg.from, from, `from in ${JSON.stringify(msg)}`);
  assert.equal(msg.text, text, `text in ${JSON.stringify(msg)}`);
  assert.equal(typeof msg.ts, "number", `ts must be a number: ${JSON.stringify(msg)}`);
  assert.ok(Number.isInteger(msg.ts), `ts must be integral ms: ${JSON.stringify(msg)}`);
  assert.ok(msg.ts >= since - 5_000 && msg.ts <= Date.now() + 5_000, `ts is not a plausible ms timestamp: ${JSON.stringify(msg)}`);
}

const inRoom = (room) => (p) => p.room === room;
const notice = (room, kind, sub) => (n) => n.room === room && n.kind === kind && n.sub === sub;

describe("rooms across two replicas sharing Redis", () => {
  const cluster = twoReplicas({ env: { FLEETGATE_HISTORY_MAX: String(HISTORY_MAX) } });
  const [A, B] = cluster.servers;

  describe("join_room and leave_room", () => {
    test("joining notifies the other members on both replicas, never the joiner", async () => {
      const fleet = uid("fleet");
      const room = "ops";
      const d1 = await member(cluster, A, fleet);
      const d2 = await member(cluster, B, fleet);
      const v3 = await member(cluster, A, fleet, { sub: "bus-3", role: "vehicle" });

      await join(d1, room);
      await join(d2, room);
      await d1.notices.waitFor(notice(room, "join", d2.sub));
      await join(v3, room);
      await d1.notices.waitFor(notice(room, "join", v3.sub));
      await d2.notices.waitFor(notice(room, "join", v3.sub));
      await sleep(SETTLE_MS);

      const seen = (m) => m.notices.items.map((n) => `${n.room}/${n.kind}/${n.sub}`);
      assert.deepEqual(seen(d1), [`${room}/join/${d2.sub}`, `${room}/join/${v3.sub}`]);
      assert.deepEqual(seen(d2), [`${room}/join/${v3.sub}`]);
      assert.deepEqual(seen(v3), [], "the joiner got a notice about itself");
    });

    test("leaving notifies the remaining members; the leaver gets nothing more from the room", async () => {
      const fleet = uid("fleet");
      const room = "night-shift";
      const d1 = await member(cluster, A, fleet);
      const d2 = await member(cluster, B, fleet);
      const d3 = await member(cluster, B, fleet);
      for (const m of [d1, d2, d3]) await join(m, room);
      await d1.notices.waitFor(notice(room, "join", d3.sub));

      await leave(d2, room);
      await d1.notices.waitFor(notice(room, "leave", d2.sub));
      await d3.notices.waitFor(notice(room, "leave", d2.sub));

      const msg = await say(d1, room, "still here?");
      assert.deepEqual(await d3.chats.waitFor(inRoom(room)), msg);
      expectError(await emitWithAck(d2.socket, "chat", { room, text: "hello?" }), "forbidden", "chat after leaving");
      expectError(await emitWithAck(d2.socket, "history", { room }), "forbidden", "history after leaving");

      await leave(d3, room);
      await d1.notices.waitFor(notice(room, "leave", d3.sub));
      await sleep(SETTLE_MS);
      assert.deepEqual(d2.chats.items, [], "a member that left still got chat");
      assert.equal(d2.notices.count(notice(room, "leave", d2.sub)), 0, "the leaver got a notice about itself");
      assert.equal(d2.notices.count(notice(room, "leave", d3.sub)), 0, "a member that left still got notices");
      assert.equal(d3.notices.count((n) => n.kind === "leave" && n.sub === d3.sub), 0);
      assert.deepEqual(
        d1.notices.items.filter((n) => n.kind === "leave").map((n) => n.sub),
        [d2.sub, d3.sub],
        "each leave is noticed once",
      );
    });

    test("valid room names at the edges of the grammar are accepted", async () => {
      const m = await member(cluster, A, uid("fleet"));
      const longest = "Ab9._:-".repeat(10).slice(0, 64);
      assert.equal(longest.length, 64);
      for (const room of ["a", "Z", "0", longest, "fleet:ops.dispatch_2-x"]) {
        await join(m, room);
        await leave(m, room);
      }
    });

    test("invalid room names → invalid_payload for join_room and leave_room", async () => {
      const m = await member(cluster, B, uid("fleet"));
      const bad = [
        ["empty", ""],
        ["65 chars", "r".repeat(65)],
        ["a space", "ops room"],
        ["a slash", "ops/room"],
        ["a hash", "room#1"],
        ["non-ASCII", "räum"],
        ["a number", 42],
        ["null", null],
        ["an array", ["ops"]],
      ];
      for (const event of ["join_room", "leave_room"]) {
        for (const [what, room] of bad) {
          expectError(await emitWithAck(m.socket, event, { room }), "invalid_payload", `${event} with ${what}`);
        }
        expectError(await emitWithAck(m.socket, event, {}), "invalid_payload", `${event} without room`);
      }
      assert.ok(m.socket.connected, "validation errors do not cost the connection");
    });

    test("room events before authentication → unauthenticated", async () => {
      const socket = await connect(A);
      for (const [event, payload] of [
        ["join_room", { room: "ops" }],
        ["leave_room", { room: "ops" }],
        ["chat", { room: "ops", text: "hi" }],
        ["history", { room: "ops" }],
      ]) {
        expectError(await emitWithAck(socket, event, payload), "unauthenticated", `${event} before authentication`);
      }
    });
  });

  describe("chat", () => {
    test("the ack is the stored message; every other member gets it once on both replicas, the sender never", async () => {
      const since = Date.now();
      const fleet = uid("fleet");
      const room = "dispatch";
      const d1 = await member(cluster, A, fleet);
      const d2 = await member(cluster, B, fleet);
      const d3 = await member(cluster, B, fleet);
      const v4 = await member(cluster, A, fleet, { sub: "bus-4", role: "vehicle" });
      const outsider = await member(cluster, A, fleet);
      for (const m of [d1, d2, d3, v4]) await join(m, room);

      const first = await say(d1, room, "bus-4, please report");
      assertMessage(first, { room, from: d1.sub, text: "bus-4, please report", since });
      for (const m of [d2, d3, v4]) assert.deepEqual(await m.chats.waitFor(inRoom(room)), first, `chat as seen by ${m.sub}`);

      const reply = await say(v4, room, "on my way — ETA 5 min 🚌");
      assertMessage(reply, { room, from: "bus-4", text: "on my way — ETA 5 min 🚌", since });
      assert.notEqual(reply.id, first.id, "message ids must differ");
      for (const m of [d1, d2, d3]) {
        assert.deepEqual(await m.chats.waitFor((c) => c.id === reply.id), reply, `reply as seen by ${m.sub}`);
      }

      await sleep(SETTLE_MS);
      assert.deepEqual(d1.chats.items, [reply], "the sender got its own chat back, or a duplicate");
      assert.deepEqual(v4.chats.items, [first], "the sender got its own chat back, or a duplicate");
      for (const m of [d2, d3]) assert.deepEqual(m.chats.items, [first, reply], `chats of ${m.sub}`);
      assert.deepEqual(outsider.chats.items, [], "a socket outside the room got chat");
    });

    test("chatting in a room not joined → forbidden, and nobody receives it", async () => {
      const fleet = uid("fleet");
      const room = "private";
      const insider = await member(cluster, A, fleet);
      const stranger = await member(cluster, B, fleet);
      await join(insider, room);

      expectError(await emitWithAck(stranger.socket, "chat", { room, text: "let me in" }), "forbidden", "chat without joining");
      expectError(await emitWithAck(stranger.socket, "chat", { room: "never-created", text: "x" }), "forbidden");

      const exception = waitForEvent(stranger.socket, "exception");
      stranger.socket.emit("chat", { room, text: "no ack" });
      const ex = await exception;
      assert.equal(ex.event, "chat");
      assert.equal(ex.code, "forbidden");
      assert.equal(typeof ex.message, "string");

      await sleep(SETTLE_MS);
      assert.deepEqual(insider.chats.items, [], "a refused chat was delivered");
      assert.ok(stranger.socket.connected);
      assert.deepEqual(await history(insider, { room }), [], "a refused chat was stored");
    });

    test("text must be a string of 1–2000 characters", async () => {
      const since = Date.now();
      const fleet = uid("fleet");
      const room = "limits";
      const m = await member(cluster, A, fleet);
      const peer = await member(cluster, B, fleet);
      await join(m, room);
      await join(peer, room);

      for (const [what, payload] of [
        ["empty text", { room, text: "" }],
        ["2001 chars", { room, text: "x".repeat(2001) }],
        ["a number", { room, text: 42 }],
        ["null", { room, text: null }],
        ["no text", { room }],
      ]) {
        expectError(await emitWithAck(m.socket, "chat", payload), "invalid_payload", `chat with ${what}`);
      }

      const longest = "y".repeat(2000);
      const msg = await say(m, room, longest);
      assertMessage(msg, { room, from: m.sub, text: longest, since });
      assert.deepEqual(await peer.chats.waitFor(inRoom(room)), msg);
      const single = await say(m, room, "k");
      assert.deepEqual((await history(peer, { room })).map((x) => x.id), [msg.id, single.id], "only the valid messages are stored");
    });

    test("the same room name in two fleets is two rooms", async () => {
      const fleetX = uid("fleet-x");
      const fleetY = uid("fleet-y");
      const room = "ops";
      // Same subs in both fleets, so nothing can be keyed by sub alone.
      const x1 = await member(cluster, A, fleetX, { sub: "disp-1" });
      const x2 = await member(cluster, B, fleetX, { sub: "disp-2" });
      const y1 = await member(cluster, A, fleetY, { sub: "disp-1" });
      const y2 = await member(cluster, B, fleetY, { sub: "disp-2" });
      await join(x1, room);
      await join(y1, room);
      await join(x2, room);
      await x1.notices.waitFor(notice(room, "join", "disp-2"));
      await join(y2, room);
      await y1.notices.waitFor(notice(room, "join", "disp-2"));

      const xMsg = await say(x1, room, "fleet X only");
      assert.deepEqual(await x2.chats.waitFor(inRoom(room)), xMsg);
      const yMsg = await say(y2, room, "fleet Y only");
      assert.deepEqual(await y1.chats.waitFor(inRoom(room)), yMsg);
      await sleep(SETTLE_MS);

      assert.deepEqual(x1.notices.items.map((n) => n.sub), ["disp-2"], `fleet X notices: ${JSON.stringify(x1.notices.items)}`);
      assert.deepEqual(y1.notices.items.map((n) => n.sub), ["disp-2"], `fleet Y notices: ${JSON.stringify(y1.notices.items)}`);
      assert.deepEqual(x1.chats.items, [], "fleet X got fleet Y's chat");
      assert.deepEqual(x2.chats.items, [xMsg]);
      assert.deepEqual(y1.chats.items, [yMsg]);
      assert.deepEqual(y2.chats.items, [], "fleet Y got fleet X's chat");
      assert.deepEqual(await history(x2, { room }), [xMsg], "fleet X history");
      assert.deepEqual(await history(y1, { room }), [yMsg], "fleet Y history");
    });
  });

  describe("history", () => {
    test("oldest first, shared across replicas, readable by later joiners, members only", async () => {
      const fleet = uid("fleet");
      const room = "log";
      const a = await member(cluster, A, fleet);
      const b = await member(cluster, B, fleet);
      await join(a, room);
      await join(b, room);
      assert.deepEqual(await history(a, { room }), [], "a fresh room has no history");

      const m1 = await say(a, room, "one");
      const m2 = await say(b, room, "two");
      const m3 = await say(a, room, "three");
      assert.deepEqual(await history(b, { room }), [m1, m2, m3], "history on B");
      assert.deepEqual(await history(a, { room }), [m1, m2, m3], "history on A");

      const late = await member(cluster, B, fleet);
      expectError(await emitWithAck(late.socket, "history", { room }), "forbidden", "history before joining");
      await join(late, room);
      assert.deepEqual(await history(late, { room }), [m1, m2, m3], "history for a later joiner");
    });

    test("limit and before page backwards through the newest messages", async () => {
      const fleet = uid("fleet");
      const room = "paging";
      const a = await member(cluster, A, fleet);
      const b = await member(cluster, B, fleet);
      await join(a, room);
      await join(b, room);
      const m = [];
      for (let i = 1; i <= HISTORY_MAX; i += 1) m.push(await say(i % 2 ? a : b, room, `message ${i}`));

      assert.deepEqual(await history(b, { room, limit: 2 }), m.slice(-2), "limit 2");
      assert.deepEqual(await history(a, { room, limit: 1 }), m.slice(-1), "limit 1");
      assert.deepEqual(await history(a, { room, limit: 100 }), m, "limit 100");
      assert.deepEqual(await history(b, { room, before: m[3].id }), m.slice(0, 3), "before the 4th");
      assert.deepEqual(await history(a, { room, before: m[3].id, limit: 2 }), m.slice(1, 3), "before the 4th, limit 2");
      assert.deepEqual(await history(b, { room, before: m[1].id, limit: 100 }), m.slice(0, 1), "before the 2nd");
      assert.deepEqual(await history(a, { room, before: m[0].id }), [], "before the oldest");
    });

    test("limit outside 1–100 → invalid_payload", async () => {
      const fleet = uid("fleet");
      const room = "bad-limits";
      const a = await member(cluster, A, fleet);
      await join(a, room);
      for (const limit of [0, 101, -1, 1000, "ten"]) {
        expectError(await emitWithAck(a.socket, "history", { room, limit }), "invalid_payload", `history limit ${JSON.stringify(limit)}`);
      }
      assert.deepEqual(await history(a, { room, limit: 1 }), []);
    });

    test(`history keeps the newest FLEETGATE_HISTORY_MAX (${HISTORY_MAX}) messages`, async () => {
      const fleet = uid("fleet");
      const room = "capped";
      const a = await member(cluster, A, fleet);
      const b = await member(cluster, B, fleet);
      await join(a, room);
      await join(b, room);
      const sent = [];
      for (let i = 1; i <= 8; i += 1) sent.push(await say(a, room, `msg ${i}`));
      const last = sent.slice(-HISTORY_MAX);
      assert.deepEqual(await history(b, { room }), last, "default limit on B");
      assert.deepEqual(await history(a, { room, limit: 100 }), last, "limit 100 on A");
      assert.deepEqual(await history(b, { room, limit: 2 }), sent.slice(-2), "limit 2");
    });
  });
});

describe("rooms on a single in-memory node", () => {
  const cluster = singleNode({ env: { FLEETGATE_HISTORY_MAX: "3" } });
  const [S] = cluster.servers;

  test("join, notice, chat, history, leave", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const room = "ops";
    const d = await member(cluster, S, fleet);
    const v = await member(cluster, S, fleet, { sub: "bus-1", role: "vehicle" });
    const other = await member(cluster, S, uid("fleet"));
    await join(d, room);
    await join(other, room);
    expectError(await emitWithAck(v.socket, "chat", { room, text: "early" }), "forbidden");
    await join(v, room);
    await d.notices.waitFor(notice(room, "join", "bus-1"));

    const sent = [];
    for (const text of ["a", "b", "c", "d"]) {
      const msg = await say(d, room, text);
      assertMessage(msg, { room, from: d.sub, text, since });
      assert.deepEqual(await v.chats.waitFor((c) => c.id === msg.id), msg);
      sent.push(msg);
    }
    assert.deepEqual(await history(v, { room }), sent.slice(-3), "history capped at 3");
    assert.deepEqual(await history(v, { room, before: sent[3].id, limit: 1 }), [sent[2]]);

    await leave(v, room);
    await d.notices.waitFor(notice(room, "leave", "bus-1"));
    await sleep(SETTLE_MS);
    assert.deepEqual(d.chats.items, [], "the sender got its own chat");
    assert.deepEqual(other.chats.items, [], "another fleet's member got chat");
    assert.deepEqual(other.notices.items, [], "another fleet's member got notices");
    assert.equal(v.notices.count((n) => n.sub === "bus-1"), 0, "notices about itself");
  });
});
