// node-postgres scenarios for tests/integration/test_clients_node.py, run once per test module:
// `node matrix.mjs TARGET=postgresql://... ...`.  Each target (direct, proxy) runs every
// scenario and prints one line per scenario: `TARGET<TAB>SCENARIO<TAB>JSON`; nothing printed
// depends on the target, so the test compares the lines of both.
import pg from 'pg'
import Cursor from 'pg-cursor'

const out = (target, scenario, value) => console.log(`${target}\t${scenario}\t${JSON.stringify(value)}`)
const rowsOf = (res) => ({ command: res.command, rowCount: res.rowCount, rows: res.rows })

// Parameterized queries (unnamed and named prepared statements) on a plain client.
async function params(client, target) {
  const results = []
  for (const [a, b, s] of [[1, 2, 'a'], [40, 2, 'b'], [-5, 5, 'é'], [7, 0, 'd'], [100, 1, 'e']]) {
    results.push(rowsOf(await client.query('select $1::int + $2::int as sum, upper($3) as up /* node params */', [a, b, s])))
  }
  await client.query('create temp table node_items (id int primary key, label text, amount numeric)')
  for (let i = 1; i <= 12; i++) {
    results.push(rowsOf(await client.query('insert into node_items values ($1, $2, $3)', [i, `item ${i}`, (i * 1.25).toFixed(2)])))
  }
  for (const k of [0, 6, 11]) {
    results.push(rowsOf(await client.query({
      name: 'node-items-over',
      text: 'select id, label, amount from node_items where id > $1 order by id',
      values: [k],
    })))
  }
  results.push(rowsOf(await client.query('update node_items set amount = amount * 2 where id % $1 = 0', [3])))
  results.push(rowsOf(await client.query('select count(*)::int as n, sum(amount)::text as total from node_items')))
  out(target, 'params', results)
}

// pg-cursor: one portal read with Execute row limits (PortalSuspended), no Sync until close.
async function cursor(client, target) {
  const batches = []
  const full = client.query(new Cursor("select g, repeat('x', g % 7) as pad from generate_series(1, $1) g /* node cursor */", [53]))
  for (;;) {
    const rows = await full.read(10)
    batches.push(rows)
    if (rows.length === 0) break
  }
  await full.close()
  const early = client.query(new Cursor('select g from generate_series(1, $1) g /* node cursor early close */', [100]))
  batches.push(await early.read(10))
  batches.push(await early.read(10))
  await early.close()
  batches.push(rowsOf(await client.query('select $1::text as after_cursors', ['ok'])))
  out(target, 'cursor', batches)
}

// pipeline: true: every query is written at once, each with its own Sync; one fails alone.
async function pipelined(connectionString, target) {
  const client = new pg.Client({ connectionString, pipeline: true })
  await client.connect()
  const pending = [
    client.query('select $1::int * 2 as doubled /* node pipeline */', [21]),
    client.query('select g, g * 10 as tens from generate_series(1, 5) g /* node pipeline simple */'),
    client.query('select 1 / $1::int as boom /* node pipeline error */', [0]),
    client.query('select $1::int * 2 as doubled /* node pipeline */', [50]),
    client.query("select string_agg(g::text, ',') as s from generate_series(1, $1) g /* node pipeline agg */", [9]),
    client.query('select $1::int * 2 as doubled /* node pipeline */', [-4]),
  ]
  const settled = await Promise.allSettled(pending)
  await client.end()
  out(target, 'pipeline', settled.map((s) => (s.status === 'fulfilled' ? rowsOf(s.value) : { error: s.reason.code })))
}

for (const arg of process.argv.slice(2)) {
  const eq = arg.indexOf('=')
  const target = arg.slice(0, eq)
  const connectionString = arg.slice(eq + 1)
  const client = new pg.Client({ connectionString })
  await client.connect()
  await params(client, target)
  await cursor(client, target)
  await client.end()
  await pipelined(connectionString, target)
}
