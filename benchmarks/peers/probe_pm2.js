// One persistent API client of PM2 (its programmatic API, pm2.list), timing each
// call; the PM2 side of probe.py.  Usage: node probe_pm2.js START END INTERVAL
// (PM2_HOME says which daemon).  Prints [[seconds since START, seconds], ...].
const pm2 = require("pm2");

const [start, end, interval] = process.argv.slice(2).map(Number);

function list() {
  return new Promise((resolve, reject) =>
    pm2.list((err, procs) => (err ? reject(err) : resolve(procs))),
  );
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

pm2.connect(async (err) => {
  if (err) {
    console.error(err);
    process.exit(2);
  }
  await list();
  while (Date.now() / 1000 < start) await sleep(1);
  const base = process.hrtime.bigint();
  const samples = [];
  while (Date.now() / 1000 < end) {
    const begin = process.hrtime.bigint();
    await list();
    const done = process.hrtime.bigint();
    samples.push([Number(begin - base) / 1e9, Number(done - begin) / 1e9]);
    if (interval > 0) await sleep(interval * 1000);
  }
  console.log(JSON.stringify(samples));
  pm2.disconnect();
  process.exit(0);
});
