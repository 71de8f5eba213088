// The CORS page's script (docs/page.md). Everything a user or the server
// wrote is put in the page as text (textContent, input values), never as
// HTML.
'use strict';

const standardMethods = ['GET', 'POST', 'DELETE'];
let etag = null;      // the ETag of the rules shown: sent as If-Match on save
let baseline = null;  // the rules as loaded, as collect() gives them, in JSON; null when none are loaded
let failedSave = false; // the banner says why the last save failed
let rowSeq = 0;       // numbers the rows' message ids

const $ = (id) => document.getElementById(id);

// el builds an element; children are elements or strings (as text).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v;
    else if (k === 'className') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// setStatus shows the banner: parts are strings (as text) or elements.
function setStatus(kind, ...parts) {
  const s = $('status');
  s.replaceChildren(...parts.filter((p) => p !== ''));
  s.className = kind || '';
  failedSave = false;
}

async function call(path, init) {
  let res;
  try {
    res = await fetch(path, Object.assign({credentials: 'same-origin', cache: 'no-store'}, init || {}));
  } catch (e) {
    return {res: {ok: false, status: 0, headers: new Headers()}, body: null, text: ''};
  }
  let text = '';
  try { text = await res.text(); } catch (e) { text = ''; }
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = null; }
  return {res, body, text};
}

// errorText is what the server said of a failed request: its JSON
// error, else its text, else the status.
function errorText(r) {
  if (r.body && typeof r.body.error === 'string' && r.body.error) return r.body.error;
  const t = (r.text || '').trim();
  if (t && !r.body && t.length <= 500 && !t.startsWith('<')) return t;
  if (r.res.status === 0) return 'the server could not be reached';
  return 'the server answered with status ' + r.res.status;
}

// sentence makes a message a sentence: a capital first, a full stop last.
function sentence(s) {
  s = s.trim();
  if (!s) return s;
  s = s[0].toUpperCase() + s.slice(1);
  return /[.!?…]$/.test(s) ? s : s + '.';
}

function button(id, text, onclick, className) {
  const b = el('button', {type: 'button', id, text});
  if (className) b.className = className;
  b.onclick = onclick;
  return b;
}

// ---- the rules table ----

function methodBox(row, list, method, checked) {
  const box = el('input', {type: 'checkbox', value: method});
  box.checked = checked;
  box.addEventListener('change', () => edited(row, 'methods'));
  if (row.methodsMsg.textContent) {
    box.setAttribute('aria-invalid', 'true');
  }
  box.setAttribute('aria-describedby', row.methodsMsg.id);
  list.append(el('label', {className: 'method'}, box, ' ' + method));
}

function addRow(rule) {
  const n = ++rowSeq;
  const origin = el('input', {type: 'text', className: 'origin', placeholder: 'https://app.example.com',
    autocomplete: 'off', spellcheck: 'false', 'aria-label': 'Origin', 'aria-describedby': 'origin-msg-' + n});
  origin.value = rule.origin || '';
  const originMsg = el('div', {className: 'msg origin-msg', id: 'origin-msg-' + n});
  const methodsMsg = el('div', {className: 'msg methods-msg', id: 'methods-msg-' + n});
  const list = el('span', {className: 'methods', role: 'group', 'aria-label': 'Methods'});
  const row = el('tr', {className: 'rule'});
  row.originInput = origin;
  row.originMsg = originMsg;
  row.methodsMsg = methodsMsg;
  const methods = rule.methods || [];
  for (const m of standardMethods) methodBox(row, list, m, methods.includes(m));
  for (const m of methods) if (!standardMethods.includes(m)) methodBox(row, list, m, true);
  const more = el('input', {type: 'text', className: 'add-method', placeholder: 'PUT', 'aria-label': 'Other method',
    autocomplete: 'off', spellcheck: 'false'});
  const addMethod = el('button', {type: 'button', className: 'add-method-button', text: 'Add method'});
  addMethod.onclick = () => {
    const m = more.value.trim().toUpperCase();
    if (!m) return;
    const have = [...list.querySelectorAll('input[type=checkbox]')].find((b) => b.value === m);
    if (have) have.checked = true; else methodBox(row, list, m, true);
    more.value = '';
    edited(row, 'methods');
  };
  more.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); addMethod.click(); } });
  origin.addEventListener('input', () => edited(row, 'origin'));
  const remove = el('button', {type: 'button', className: 'remove', text: 'Remove'});
  remove.onclick = () => { row.remove(); updateEmpty(); afterEdit(); };
  row.append(
    el('td', {className: 'origin-cell'}, origin, originMsg),
    el('td', {className: 'methods-cell'}, list, el('span', {className: 'more'}, more, addMethod), methodsMsg),
    el('td', {className: 'remove-cell'}, remove));
  $('rule-rows').append(row);
  updateEmpty();
  return row;
}

// setMessage shows (or, with '', clears) a row's message for a field:
// 'origin' or 'methods'.
function setMessage(row, field, text) {
  const msg = field === 'methods' ? row.methodsMsg : row.originMsg;
  msg.textContent = text;
  const targets = field === 'methods' ? [...row.querySelectorAll('input[type=checkbox]')] : [row.originInput];
  for (const t of targets) {
    if (text) t.setAttribute('aria-invalid', 'true'); else t.removeAttribute('aria-invalid');
  }
  row.classList.toggle('invalid', !!(row.originMsg.textContent || row.methodsMsg.textContent));
}

function addMessage(row, field, text) {
  const msg = field === 'methods' ? row.methodsMsg : row.originMsg;
  setMessage(row, field, msg.textContent ? msg.textContent + '\n' + text : text);
}

function clearMessages() {
  for (const row of rows()) { setMessage(row, 'origin', ''); setMessage(row, 'methods', ''); }
}

function rows() { return [...$('rule-rows').querySelectorAll('tr.rule')]; }

function messagesLeft() {
  return rows().some((r) => r.originMsg.textContent || r.methodsMsg.textContent);
}

// edited is a change of a row's field: the message about that field no
// longer applies to what the row shows.
function edited(row, field) {
  if (field === 'origin' || row.generalMsg) {
    setMessage(row, 'origin', '');
    row.generalMsg = false;
  }
  if (field === 'methods') setMessage(row, 'methods', '');
  afterEdit();
}

// afterEdit keeps the banner and the unsaved-changes note true to what
// the page shows: a failed save's banner goes once the rows it was about
// are fixed or removed, or, for a message about no row, once anything
// changed.
function afterEdit() {
  if (failedSave) {
    if (messagesLeft()) {
      setStatus('error', 'Not saved. Correct the messages beside the rules, then save again.');
      failedSave = true;
    } else {
      setStatus('', '');
    }
  }
  updateDirty();
}

function updateEmpty() {
  const empty = $('rule-rows').children.length === 0;
  $('no-rules').hidden = !empty || baseline === null;
  $('rules').hidden = empty;
}

function render(rules) {
  $('rule-rows').replaceChildren();
  for (const r of rules) addRow(r);
  updateEmpty();
}

function collect() {
  return rows().map((row) => ({
    origin: row.originInput.value.trim(),
    methods: [...row.querySelectorAll('input[type=checkbox]')].filter((b) => b.checked).map((b) => b.value),
  }));
}

// ---- unsaved changes ----

function dirty() {
  return baseline !== null && JSON.stringify(collect()) !== baseline;
}

function updateDirty() {
  $('dirty').hidden = !dirty();
}

// setLoaded enables saving only while the page shows rules it read, with
// their ETag: a save always names the version it replaces, so a page
// that could not load the rules never replaces them with what it shows.
function setLoaded(tag) {
  etag = tag;
  $('save').disabled = !etag;
  $('add-rule').disabled = !etag;
}

function setBaseline() {
  baseline = JSON.stringify(collect());
  updateDirty();
  updateEmpty();
}

// askToLoad loads the rules again, after asking when that would throw
// away changes not saved.
function askToLoad() {
  if (!dirty()) { load(); return; }
  $('confirm').hidden = false;
  $('keep-editing').focus();
}

function hideConfirm() { $('confirm').hidden = true; }

window.addEventListener('beforeunload', (e) => {
  if (dirty()) { e.preventDefault(); e.returnValue = ''; }
});

// ---- loading and saving ----

let shownAccount = null; // the account whose rules the page shows

// signedInAs is the account an answer was made for when it is not the
// one the page shows (the user has signed in to another account since,
// in another tab), else null.
function signedInAs(body) {
  if (!body || typeof body.account !== 'string' || !shownAccount || body.account === shownAccount) return null;
  return body.account;
}

// otherAccountText says that the page speaks for another account than
// the signed-in one.
function otherAccountText(now) {
  return 'You are now signed in to account ' + now + ', but this page shows account ' + shownAccount + '. ';
}

async function load() {
  hideConfirm();
  setLoaded(null);
  const r = await call('rules');
  if (!r.res.ok || !r.res.headers.get('ETag') || !r.body || !Array.isArray(r.body.rules)) {
    // Show nothing of rules or an account this page may no longer speak for.
    $('rule-rows').replaceChildren();
    $('account').textContent = '…';
    $('history').replaceChildren();
    $('history-note').hidden = true;
    $('no-history').hidden = true;
    baseline = null;
    updateDirty();
    updateEmpty();
    if (r.res.status === 403) {
      setStatus('error', 'You are not signed in to an account, so there are no rules to show. Sign in again.');
    } else {
      const why = sentence(errorText(r));
      setStatus('error', 'Could not load the rules: ' + why + (/try again/i.test(why) ? '' : ' Reload to try again.'));
    }
    return;
  }
  setLoaded(r.res.headers.get('ETag'));
  const before = shownAccount;
  shownAccount = r.body.account;
  $('account').textContent = r.body.account;
  render(r.body.rules);
  setBaseline();
  const warning = typeof r.body.warning === 'string' ? r.body.warning.trim() : '';
  if (warning) setStatus('error', warning);
  else setStatus('', before && before !== shownAccount ? 'Now showing account ' + shownAccount + ', the account you are signed in to.' : '');
  $('check-result').textContent = ''; // it spoke of the rules shown before
  $('check-result').className = '';
  await loadHistory();
}

const savedCaveat = 'Browsers may take a short while (up to an hour with the default settings) to notice the change.';

async function save() {
  hideConfirm();
  clearMessages();
  setStatus('', 'Saving…');
  if (!etag) { setStatus('error', 'Not saved: the rules are not loaded. Reload to try again.'); return; }
  const headers = {'Content-Type': 'application/json', 'If-Match': etag};
  $('save').disabled = true; // one save at a time
  const r = await call('rules', {method: 'PUT', headers, body: JSON.stringify(collect())});
  $('save').disabled = !etag;
  const {res, body} = r;
  if (res.ok && body && Array.isArray(body.rules)) {
    setLoaded(res.headers.get('ETag'));
    render(body.rules);
    setBaseline();
    const warning = typeof body.warning === 'string' && body.warning.trim() ? sentence(body.warning) + ' ' : '';
    setStatus('ok', 'Saved. ' + warning + savedCaveat);
    await loadHistory();
    return;
  }
  const now = signedInAs(body);
  if (res.status === 412 && now) {
    setStatus('error',
      el('span', {text: 'Not saved. ' + otherAccountText(now) + 'Nothing was saved to either account, and your ' +
        'changes are still here. '}),
      button('load-current', 'Show account ' + now, askToLoad));
    $('save').disabled = true;
    return;
  }
  if (res.status === 412) {
    loadHistory(); // the change that came first is listed there
    setStatus('error',
      el('span', {text: 'Not saved. Someone else changed these rules since you opened this page (in another tab, ' +
        'or another person signed in to this account). Nothing was overwritten, and your changes are still ' +
        'here. To save them, load the current rules (this discards your changes on this page) and make your ' +
        'change again. '}),
      button('load-current', 'Load the current rules', askToLoad));
    return;
  }
  if (res.status === 400 && body && Array.isArray(body.problems)) {
    const list = rows();
    const general = [];
    for (const p of body.problems) {
      const text = typeof p.message === 'string' ? p.message : '';
      const row = p.rule > 0 ? list[p.rule - 1] : null;
      if (!row) { general.push(text); continue; }
      if (p.field === 'methods') addMessage(row, 'methods', text);
      else {
        addMessage(row, 'origin', text);
        if (p.field !== 'origin') row.generalMsg = true;
      }
    }
    const parts = [];
    if (general.length) parts.push(general.map(sentence).join('\n'));
    if (messagesLeft()) parts.push('Correct the messages beside the rules, then save again.');
    setStatus('error', 'Not saved. ' + (parts.length ? parts.join('\n') : sentence(errorText(r))));
    failedSave = true;
    return;
  }
  setStatus('error', 'Not saved: ' + sentence(errorText(r)));
  failedSave = true;
}

async function check() {
  const out = $('check-result');
  const q = new URLSearchParams({origin: $('check-origin').value.trim(), method: $('check-method').value.trim()});
  const r = await call('check?' + q.toString());
  if (!r.res.ok || !r.body) { out.className = 'error'; out.textContent = errorText(r); return; }
  const now = signedInAs(r.body);
  if (now) {
    out.className = 'error';
    out.textContent = otherAccountText(now) + 'Reload the page to test the rules of account ' + now + '.';
    return;
  }
  out.className = r.body.allowed ? 'ok' : 'error';
  const hint = typeof r.body.hint === 'string' && r.body.hint ? ' ' + r.body.hint : '';
  out.textContent = (r.body.allowed ? 'Allowed: ' : 'Blocked: ') + r.body.reason + '.' + hint;
}

// ---- recent changes ----

function methodsText(m) { return (m || []).join(', '); }

function summary(rules) {
  if (!rules.length) return 'no origins';
  return rules.map((r) => r.origin + ' (' + methodsText(r.methods) + ')').join('; ');
}

function sameMethods(a, b) {
  const x = [...(a || [])].sort(), y = [...(b || [])].sort();
  return x.length === y.length && x.every((m, i) => m === y[i]);
}

function sameRules(a, b) {
  if (a.length !== b.length) return false;
  const byOrigin = new Map(b.map((r) => [r.origin, r.methods]));
  return a.every((r) => byOrigin.has(r.origin) && sameMethods(r.methods, byOrigin.get(r.origin)));
}

// diff says, one line each, what changed from the rules before to after.
function diff(before, after) {
  const was = new Map(before.map((r) => [r.origin, r.methods]));
  const is = new Map(after.map((r) => [r.origin, r.methods]));
  const lines = [];
  for (const r of after) {
    if (!was.has(r.origin)) lines.push('Added ' + r.origin + ' (' + methodsText(r.methods) + ')');
    else if (!sameMethods(was.get(r.origin), r.methods)) {
      lines.push(r.origin + ': methods ' + (methodsText(was.get(r.origin)) || 'none') + ' → ' +
        (methodsText(r.methods) || 'none'));
    }
  }
  for (const r of before) if (!is.has(r.origin)) lines.push('Removed ' + r.origin);
  return lines.length ? lines : ['No change to the rules'];
}

function rulesOf(x) { return Array.isArray(x) ? x : []; }

function when(t) {
  const d = new Date(t);
  const shown = isNaN(d) ? String(t) : d.toLocaleString(undefined, {dateStyle: 'medium', timeStyle: 'short'});
  return el('time', {className: 'when', datetime: String(t), text: shown});
}

function historyItems(changes) {
  const items = [];
  changes.forEach((c, i) => {
    const older = changes[i + 1];
    const rules = rulesOf(c.rules);
    let lines;
    if (Array.isArray(c.before)) lines = diff(c.before, rules);
    else if (older) lines = diff(rulesOf(older.rules), rules);
    else lines = ['Rules set to: ' + summary(rules)];
    items.push(el('li', {className: 'change'},
      el('div', {className: 'meta'}, when(c.time), ' by ', el('b', {className: 'by', text: String(c.by)})),
      el('ul', {className: 'what'}, ...lines.map((l) => el('li', {text: l})))));
    if (older && Array.isArray(c.before) && !sameRules(c.before, rulesOf(older.rules))) {
      items.push(el('li', {className: 'gap', text: '(a change is missing from this list here)'}));
    }
  });
  return items;
}

async function loadHistory() {
  const list = $('history');
  const note = $('history-note');
  const r = await call('history');
  note.className = 'hint';
  if (!r.res.ok || !r.body || !Array.isArray(r.body.changes)) {
    list.replaceChildren();
    $('no-history').hidden = true;
    note.className = 'error';
    // A 503's text is written for the user; other failures get a lead-in.
    const why = sentence(errorText(r));
    note.textContent = r.res.status === 503 && r.body && r.body.error ? why : 'Recent changes are not available: ' + why;
    note.hidden = false;
    return;
  }
  const now = signedInAs(r.body);
  if (now) {
    list.replaceChildren();
    $('no-history').hidden = true;
    note.className = 'error';
    note.textContent = otherAccountText(now) + 'Reload the page to see the changes of account ' + now + '.';
    note.hidden = false;
    return;
  }
  const text = typeof r.body.note === 'string' ? r.body.note.trim() : '';
  note.textContent = text;
  note.hidden = !text;
  $('no-history').hidden = r.body.changes.length > 0;
  list.replaceChildren(...historyItems(r.body.changes));
}

$('add-rule').onclick = () => {
  addRow({origin: '', methods: ['GET']}).querySelector('input.origin').focus();
  afterEdit();
};
$('save').onclick = save;
$('reload').onclick = askToLoad;
$('discard').onclick = () => load();
$('keep-editing').onclick = () => { hideConfirm(); $('reload').focus(); };
$('check').onclick = check;
load();
