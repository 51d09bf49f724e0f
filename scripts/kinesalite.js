// Starts kinesalite bound to 127.0.0.1 (its CLI has no host flag).
//   node scripts/kinesalite.js PORT     (module from $SLUICE_NODE_MODULES)
const path = require('path');
const port = parseInt(process.argv[2], 10);
const modules = process.env.SLUICE_NODE_MODULES || path.join(process.env.HOME, '.cache/sluice/node/node_modules');
const kinesalite = require(path.join(modules, 'kinesalite'));
kinesalite({ inMemory: true, createStreamMs: 10, deleteStreamMs: 10, updateStreamMs: 10, shardLimit: 200 })
  .listen(port, '127.0.0.1', (err) => {
    if (err) { console.error(err); process.exit(1); }
    console.log(`kinesalite listening on 127.0.0.1:${port}`);
  });
