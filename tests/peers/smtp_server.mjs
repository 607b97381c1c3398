// nodemailer's smtp-server on 127.0.0.1, driven by a test (tests/support/smtp_peer.py).
//
// argv[2]: a JSON config {port, key, cert, users: {name: password}, smtputf8, pipelining}.
// stdin: JSON lines the test sends at any time: {"faults": {...}} replaces the faults,
//   {"users": {...}} the accounts; each is answered {"event": "ok"} once applied.
//   faults.rcpt / faults.data: {address: {code, message, times}} answer RCPT TO, or the final
//   reply after DATA, for that recipient with `code` (`times` times; -1 for always);
//   faults.data_ratio: share of messages answered 451 after DATA; faults.drop_ratio: share of
//   messages whose connection is dropped instead of answered.
// stdout: one JSON line per event: ready, auth, message, refused, dropped.
import { SMTPServer } from 'smtp-server';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

const config = JSON.parse(process.argv[2]);
let faults = { rcpt: {}, data: {}, data_ratio: 0, drop_ratio: 0 };
const authAttempts = new Map(); // username -> AUTH commands answered
let totalAuth = 0;

function emit(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

// A fault for `address` at `stage`, used up one time; null when none applies.
function takeFault(stage, address) {
    const fault = (faults[stage] || {})[address];
    if (!fault || fault.times === 0) {
        return null;
    }
    if (fault.times > 0) {
        fault.times -= 1;
    }
    return fault;
}

function smtpError(code, message) {
    const err = new Error(message);
    err.responseCode = code;
    return err;
}

// smtp-server hands handlers IDN domains as U-labels; its log has the command as sent.
const quiet = () => false;
const logger = {
    trace: quiet, info: quiet, warn: quiet, error: quiet, fatal: quiet,
    debug(entry, ...args) {
        if (entry && entry.tnx === 'command' && ['MAIL', 'RCPT'].includes(entry.command)) {
            emit({ event: 'command', line: args.map(String).join(' ').replace(/^C:\s*/, '') });
        }
    },
};

const tls = config.key ? { key: readFileSync(config.key), cert: readFileSync(config.cert) } : {};
const server = new SMTPServer({
    ...tls,
    secure: false, // STARTTLS (announced when a key is given)
    hideSTARTTLS: !config.key,
    allowInsecureAuth: !config.key,
    authMethods: ['PLAIN', 'LOGIN'],
    authOptional: !config.users,
    hidePIPELINING: config.pipelining === false,
    hideSMTPUTF8: config.smtputf8 === false,
    size: 10 * 1024 * 1024,
    logger,
    disableReverseLookup: true,
    onAuth(auth, session, callback) {
        totalAuth += 1;
        authAttempts.set(auth.username, (authAttempts.get(auth.username) || 0) + 1);
        const ok = config.users && config.users[auth.username] === auth.password;
        emit({ event: 'auth', method: auth.method, username: auth.username, ok, total: totalAuth });
        if (!ok) {
            return callback(smtpError(535, '5.7.8 Authentication credentials invalid'));
        }
        callback(null, { user: auth.username });
    },
    onRcptTo(address, session, callback) {
        const fault = takeFault('rcpt', address.address);
        if (fault) {
            emit({ event: 'refused', stage: 'rcpt', rcpt: address.address, code: fault.code });
            return callback(smtpError(fault.code, fault.message || 'refused by the test'));
        }
        callback();
    },
    onData(stream, session, callback) {
        const chunks = [];
        stream.on('data', chunk => chunks.push(chunk));
        stream.on('end', () => {
            const raw = Buffer.concat(chunks).toString('utf8');
            const header = raw.split(/\r?\n\r?\n/, 1)[0];
            const match = /^message-id:\s*(.*)$/im.exec(header);
            const rcpt = session.envelope.rcptTo.map(r => r.address);
            const roll = Math.random();
            if (roll < faults.drop_ratio) {
                emit({ event: 'dropped', rcpt });
                for (const connection of server.connections) {
                    if (connection.id === session.id) {
                        connection._socket.destroy();
                    }
                }
                return;
            }
            const fault = takeFault('data', rcpt[0]);
            if (fault || roll < faults.drop_ratio + faults.data_ratio) {
                const code = fault ? fault.code : 451;
                emit({ event: 'refused', stage: 'data', rcpt, code });
                return callback(smtpError(code, (fault && fault.message) || '4.3.0 try again'));
            }
            emit({
                event: 'message',
                mail_from: session.envelope.mailFrom.address,
                rcpt_to: rcpt,
                message_id: match ? match[1].trim() : null,
                utf8: Boolean(session.envelope.mailFrom.args && session.envelope.mailFrom.args.SMTPUTF8),
                tls: Boolean(session.secure),
                user: session.user || null,
                auth_attempts: totalAuth,
                header,
                raw: Buffer.concat(chunks).toString('base64'), // the bytes as received (DKIM checks)
            });
            callback(null, '2.0.0 queued');
        });
    },
});

server.on('error', err => emit({ event: 'error', message: String(err) }));
createInterface({ input: process.stdin }).on('line', line => {
    const command = JSON.parse(line);
    if (command.users) {
        config.users = command.users;
    }
    if (command.faults) {
        faults = { rcpt: {}, data: {}, data_ratio: 0, drop_ratio: 0, ...command.faults };
    }
    emit({ event: 'ok' });
});
process.stdin.on('end', () => process.exit(0)); // the test is done: no lingering close
server.listen(config.port || 0, '127.0.0.1', () => {
    emit({ event: 'ready', port: server.server.address().port });
});
