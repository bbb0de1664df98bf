'use strict';
// A real ari-client (npm) application, driven by tests/integration/test_clients.py.
//
//   node ari_client_check.js BASE_URL USER PASSWORD APP
//
// Connects (loading the api-docs through BASE_URL), checks that the claim operation was
// generated, starts APP and prints one JSON object per line on stdout:
//   {"kind":"connected","claimChannel":"function"}
//   {"kind":"started"}
//   {"kind":"event","type":...,"application":...,"channel":...,"resource":...,"args":...}
//   {"kind":"claimed","channel":...} / {"kind":"claim_failed",...}  (on CallBroadcast)
//   {"kind":"error","message":...}  then exit 1 (ari-client throws on an event whose model
//                                   it does not know, so an unknown type ends up here)
// It stops when stdin closes.

const ari = require('ari-client');

const [url, user, password, app] = process.argv.slice(2);

function report(object) {
  process.stdout.write(JSON.stringify(object) + '\n');
}

function fail(err) {
  report({ kind: 'error', message: String((err && (err.stack || err.message)) || err) });
  process.exit(1);
}

process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);

async function main() {
  if (!app) {
    throw new Error('usage: node ari_client_check.js BASE_URL USER PASSWORD APP');
  }
  const client = await ari.connect(url, user, password);
  report({ kind: 'connected', claimChannel: typeof client.events.claimChannel });
  if (typeof client.events.claimChannel !== 'function') {
    throw new Error('client.events.claimChannel was not generated from the api-docs');
  }

  client.on('*', (event, resource) => {
    report({
      kind: 'event',
      type: event.type,
      application: event.application,
      channel: event.channel ? event.channel.id : undefined,
      // The object ari-client built from the event model (a Channel instance for channel
      // events): proves the model of this event type was known.
      resource: resource && typeof resource.id === 'string' ? resource.id : undefined,
      args: event.args,
    });
  });

  client.on('CallBroadcast', async (event) => {
    try {
      await client.events.claimChannel({ channelId: event.channel.id, application: app });
      report({ kind: 'claimed', channel: event.channel.id });
    } catch (err) {
      report({ kind: 'claim_failed', channel: event.channel.id, message: String(err.message || err) });
    }
  });

  await client.start(app);
  report({ kind: 'started' });

  process.stdin.on('end', () => {
    try {
      client.stop();
    } finally {
      process.exit(0);
    }
  });
  process.stdin.resume();
}

main().catch(fail);
