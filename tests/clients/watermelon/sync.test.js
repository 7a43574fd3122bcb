// Two devices of one field worker and one of their supervisor, each a real WatermelonDB database
// (LokiJS adapter, in memory), sync through the service's WatermelonDB endpoints with the
// library's own synchronize(). Needs BASE_URL, ADMIN_EMAIL and ADMIN_PASSWORD of a running
// service with rate limits off.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { Database, Model, appSchema, tableSchema } = require('@nozbe/watermelondb');
const LokiJSAdapter = require('@nozbe/watermelondb/adapters/lokijs').default;
const { synchronize } = require('@nozbe/watermelondb/sync');
const { setGenerator } = require('@nozbe/watermelondb/utils/common/randomId');

// The service keys records by UUID; an app sets WatermelonDB's id generator accordingly.
setGenerator(() => crypto.randomUUID());

const BASE_URL = process.env.BASE_URL || 'http://127.0.0.1:8080';
const ADMIN_EMAIL = process.env.ADMIN_EMAIL;
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD;

const num = (name, isOptional = false) => ({ name, type: 'number', isOptional });
const str = (name, isOptional = false) => ({ name, type: 'string', isOptional });
const schema = appSchema({
  version: 1,
  tables: [
    tableSchema({
      name: 'attendance',
      columns: [
        str('user_id', true), str('facility_id'), str('status', true),
        num('clock_in_at'), num('clock_out_at', true),
        num('clock_in_latitude'), num('clock_in_longitude'), num('clock_in_accuracy_m', true),
        num('clock_out_latitude', true), num('clock_out_longitude', true), num('clock_out_accuracy_m', true),
        num('distance_m', true), { name: 'outside_geofence', type: 'boolean', isOptional: true },
        str('source', true), str('device_id', true), str('notes', true), num('sync_version', true),
        num('server_created_at', true), num('server_updated_at', true),
      ],
    }),
    tableSchema({
      name: 'facilities',
      columns: [
        str('code'), str('name'), str('type'), num('latitude'), num('longitude'), num('geofence_radius_m'),
        str('status'), str('address', true), str('contact_phone', true), str('council_id'),
        str('council_name'), str('region_id'), str('region_name'),
      ],
    }),
  ],
});

class Attendance extends Model {
  static table = 'attendance';
}
class Facility extends Model {
  static table = 'facilities';
}

function device(name) {
  const adapter = new LokiJSAdapter({
    schema,
    dbName: name,
    useWebWorker: false,
    useIncrementalIndexedDB: false,
    // Without this LokiJS keeps a save timer alive and Node never exits.
    extraLokiOptions: { autosave: false },
  });
  return new Database({ adapter, modelClasses: [Attendance, Facility] });
}

async function api(method, path, token, body) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(BASE_URL + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function login(email, password) {
  const res = await api('POST', '/api/auth/login', null, { email, password });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return { token: res.body.access_token, id: res.body.user.id };
}

/** One synchronize() run. `onPush` sees the push response before synchronize does. */
async function sync(db, user, { onPush } = {}) {
  await synchronize({
    database: db,
    // The server sends every record as `updated` (WatermelonDB creates those it lacks).
    sendCreatedAsUpdated: true,
    pullChanges: async ({ lastPulledAt, schemaVersion, migration }) => {
      // As the library's documentation writes it: `null` on the first sync, for both.
      const migrationParam = encodeURIComponent(JSON.stringify(migration));
      const res = await api(
        'GET',
        `/api/sync/watermelon?last_pulled_at=${lastPulledAt}&schema_version=${schemaVersion}&migration=${migrationParam}`,
        user.token,
      );
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return { changes: res.body.changes, timestamp: res.body.timestamp };
    },
    pushChanges: async ({ changes, lastPulledAt }) => {
      const res = await api('POST', `/api/sync/watermelon?last_pulled_at=${lastPulledAt}`, user.token, { changes });
      if (onPush) await onPush(res);
      // 200 names records the service refused: the library keeps them on the device, unsynced.
      if (res.status === 200) return { experimentalRejectedIds: res.body.experimentalRejectedIds };
      if (res.status !== 204) throw new Error(`push refused: ${res.status} ${JSON.stringify(res.body)}`);
    },
  });
}

const all = (db) => db.get('attendance').query().fetch();
const byId = async (db, id) => (await all(db)).find((r) => r.id === id);

async function clockInOut(db, facility, hoursAgo, hours, notes) {
  const start = Date.now() - hoursAgo * 3600_000;
  let created;
  await db.write(async () => {
    created = await db.get('attendance').create((r) => {
      r._setRaw('facility_id', facility.id);
      r._setRaw('clock_in_at', start);
      r._setRaw('clock_out_at', start + hours * 3600_000);
      r._setRaw('clock_in_latitude', facility.latitude);
      r._setRaw('clock_in_longitude', facility.longitude);
      r._setRaw('clock_in_accuracy_m', 6);
      r._setRaw('clock_out_latitude', facility.latitude);
      r._setRaw('clock_out_longitude', facility.longitude);
      r._setRaw('notes', notes);
    });
  });
  return created.id;
}

async function setNotes(db, id, notes) {
  const record = await byId(db, id);
  await db.write(() => record.update((r) => r._setRaw('notes', notes)));
}

async function serverRecord(user, id) {
  return api('GET', `/api/attendance/${id}`, user.token);
}

test('two devices and a supervisor sync attendance through the WatermelonDB protocol', async () => {
  assert.ok(ADMIN_EMAIL && ADMIN_PASSWORD, 'ADMIN_EMAIL and ADMIN_PASSWORD are needed');
  const admin = await login(ADMIN_EMAIL, ADMIN_PASSWORD);
  const tag = crypto.randomUUID().slice(0, 8);

  // Arrange: a facility, a supervisor, their field worker, and someone else's worker.
  const councils = await api('GET', '/api/councils?per_page=100', admin.token);
  const gasabo = councils.body.data.find((c) => c.name === 'Gasabo');
  const fac = await api('POST', '/api/facilities', admin.token, {
    code: `WM-${tag}`, name: `Watermelon test centre ${tag}`, council_id: gasabo.id, latitude: -1.95, longitude: 30.06,
  });
  assert.equal(fac.status, 201, JSON.stringify(fac.body));
  const facility = fac.body;
  const password = 'a long enough passphrase';
  const mkUser = async (role, supervisorId) => {
    const email = `${role}-${tag}-${crypto.randomUUID().slice(0, 6)}@wm.example`;
    const res = await api('POST', '/api/users', admin.token, {
      email, password, first_name: 'Wm', last_name: role, role, facility_id: facility.id, supervisor_id: supervisorId,
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return login(email, password);
  };
  const supervisor = await mkUser('supervisor');
  const worker = await mkUser('focal', supervisor.id);
  const stranger = await mkUser('focal');

  const deviceA = device(`a-${tag}`);
  const deviceB = device(`b-${tag}`);
  const deviceS = device(`s-${tag}`);

  // A works offline: two shifts, then syncs.
  const first = await clockInOut(deviceA, facility, 30, 8, 'day one');
  const second = await clockInOut(deviceA, facility, 20, 6, 'day two');
  await sync(deviceA, worker);
  for (const id of [first, second]) {
    const res = await serverRecord(worker, id);
    assert.equal(res.status, 200, `record ${id} reached the server`);
    assert.equal(res.body.source, 'sync');
  }
  assert.equal((await serverRecord(worker, first)).body.duration_s, 8 * 3600);

  // B syncs and sees them, with the server's columns filled in.
  await sync(deviceB, worker);
  const onB = await byId(deviceB, first);
  assert.ok(onB, 'device B has the record');
  assert.equal(onB._raw.notes, 'day one');
  assert.equal(onB._raw.status, 'closed');
  assert.equal(onB._raw.user_id, worker.id);
  assert.equal((await all(deviceB)).filter((r) => r._raw.facility_id === facility.id).length, 2);
  assert.ok((await deviceB.get('facilities').query().fetch()).some((f) => f.id === facility.id), 'facilities are pulled');

  // A stale push (based on a pull from before B's edit) is refused whole with 409.
  const stale = await api('GET', '/api/sync/watermelon', worker.token);
  // B and A edit the same record; B syncs first, then A.
  await setNotes(deviceB, first, 'edited on B');
  await setNotes(deviceA, first, 'edited on A');
  await sync(deviceB, worker);
  const refused = await api('POST', `/api/sync/watermelon?last_pulled_at=${stale.body.timestamp}`, worker.token, {
    changes: { attendance: { created: [], updated: [{ ...(await byId(deviceA, first))._raw }], deleted: [] } },
  });
  assert.equal(refused.status, 409, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'conflict');
  await sync(deviceA, worker);
  await sync(deviceB, worker);
  // WatermelonDB keeps the locally changed column of the later syncing device (A), pushes it,
  // and both devices converge to what the server then holds.
  const server = (await serverRecord(worker, first)).body;
  assert.equal(server.notes, 'edited on A');
  assert.equal((await byId(deviceA, first))._raw.notes, server.notes);
  assert.equal((await byId(deviceB, first))._raw.notes, server.notes);

  // A deletes the second shift; it disappears from B.
  const doomed = await byId(deviceA, second);
  await deviceA.write(() => doomed.markAsDeleted());
  await sync(deviceA, worker);
  assert.equal((await serverRecord(worker, second)).status, 404);
  await sync(deviceB, worker);
  assert.equal(await byId(deviceB, second), undefined, 'the deletion reached device B');

  // A push whose response is lost: the server applied it, the device retries; nothing doubles.
  const third = await clockInOut(deviceA, facility, 10, 4, 'lost response');
  await assert.rejects(
    sync(deviceA, worker, {
      onPush: async (res) => {
        assert.equal(res.status, 204);
        throw new Error('network dropped the response');
      },
    }),
    /network dropped the response/,
  );
  await sync(deviceA, worker);
  const mine = await api('GET', `/api/attendance/my-records?per_page=100`, worker.token);
  const thirdCopies = mine.body.data.filter((r) => r.notes === 'lost response');
  assert.equal(thirdCopies.length, 1, 'stored once');
  assert.equal(thirdCopies[0].id, third);
  assert.equal(mine.body.total, 2, 'first and third; the second is deleted');

  // A shift pushed in one sync and deleted on the phone before the next: the next pull must not
  // bring it back, and the deletion reaches the server.
  const regretted = await clockInOut(deviceA, facility, 3, 1, 'clocked by mistake');
  await sync(deviceA, worker);
  assert.equal((await serverRecord(worker, regretted)).status, 200);
  await deviceA.write(async () => (await byId(deviceA, regretted)).markAsDeleted());
  await sync(deviceA, worker);
  assert.equal(await byId(deviceA, regretted), undefined, 'the deleted shift stays deleted');
  assert.equal((await serverRecord(worker, regretted)).status, 404, 'and the deletion was pushed');

  // A phone whose date had reset records a shift 40 days back, beside a real one: the service
  // refuses the first alone, the device keeps it unsynced, and the real one reaches the server.
  const misdated = await clockInOut(deviceA, facility, 40 * 24, 2, 'date was wrong');
  const genuine = await clockInOut(deviceA, facility, 2, 1, 'real shift');
  await sync(deviceA, worker);
  assert.equal((await serverRecord(worker, genuine)).status, 200, 'the real shift was stored');
  assert.equal((await serverRecord(worker, misdated)).status, 404, 'the misdated one was not');
  assert.equal((await byId(deviceA, genuine))._raw._status, 'synced');
  assert.equal((await byId(deviceA, misdated))._raw._status, 'created', 'kept on the device, not synced');
  await sync(deviceA, worker);
  assert.ok(await byId(deviceA, misdated), 'and still there after the next sync');

  // Someone outside the supervisor's team clocks a shift.
  const deviceX = device(`x-${tag}`);
  const foreign = await clockInOut(deviceX, facility, 5, 2, 'not your team');
  await sync(deviceX, stranger);
  assert.equal((await serverRecord(stranger, foreign)).status, 200);

  // The supervisor's device pulls the team's records and nobody else's.
  await sync(deviceS, supervisor);
  const seen = (await all(deviceS)).map((r) => r.id);
  assert.ok(seen.includes(first) && seen.includes(third), 'the team is visible');
  assert.ok(!seen.includes(foreign), "another team's record is not");
  assert.ok(!seen.includes(second), 'deleted records are not sent on a first sync');

  // Another user's record cannot be written through the protocol: it alone is refused.
  const theft = await api('POST', `/api/sync/watermelon?last_pulled_at=${stale.body.timestamp}`, stranger.token, {
    changes: { attendance: { created: [], updated: [], deleted: [first] } },
  });
  assert.equal(theft.status, 200, JSON.stringify(theft.body));
  assert.deepEqual(theft.body.experimentalRejectedIds.attendance, [first]);
  assert.equal((await serverRecord(worker, first)).status, 200);

  // The supervisor's app edits a team member's shift it pulled and clocks its own user's shift:
  // the library keeps the edit on the device, unsynced, and the own shift reaches the server.
  const firstNotes = (await serverRecord(worker, first)).body.notes;
  assert.equal(typeof firstNotes, 'string');
  await setNotes(deviceS, first, "the supervisor's edit");
  const own = await clockInOut(deviceS, facility, 3, 1, "the supervisor's own");
  await sync(deviceS, supervisor);
  assert.equal((await serverRecord(supervisor, own)).status, 200, 'the own shift was stored');
  assert.equal((await byId(deviceS, own))._raw._status, 'synced');
  assert.equal((await byId(deviceS, first))._raw._status, 'updated', 'the edit is kept, not synced');
  const kept = await serverRecord(worker, first);
  assert.equal(kept.status, 200, JSON.stringify(kept.body));
  assert.equal(kept.body.notes, firstNotes, 'the worker\'s record is as the worker left it');
});
