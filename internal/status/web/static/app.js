// Live view of /api/v1/status for wsrc-server's status page.
//
// Every value shown comes from the network (agent and reader names are
// chosen by card agents), so the DOM is built with createElement and
// textContent only: never innerHTML or other HTML strings. The page's
// Content-Security-Policy forbids inline script as a second line of
// defence.
'use strict';

(function () {
  const POLL_MS = 2000; // status.PollInterval
  const STATES = ['init', 'ready', 'associated'];
  const byId = (id) => document.getElementById(id);
  let updates = 0;

  // el makes an element with text (converted to a string) and a class.
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function setText(id, text) {
    byId(id).textContent = text;
  }

  // duration words a number of seconds: "45s", "3m 05s", "2h 04m", "3d 4h".
  function duration(sec) {
    sec = Math.max(0, Math.floor(sec));
    const d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24,
      m = Math.floor(sec / 60) % 60, s = sec % 60;
    const two = (n) => (n < 10 ? '0' : '') + n;
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + two(m) + 'm';
    if (m > 0) return m + 'm ' + two(s) + 's';
    return s + 's';
  }

  // clock words an RFC 3339 UTC time to the second: "2026-03-01 12:00:05 UTC".
  function clock(ts) {
    const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)/.exec(String(ts));
    return m ? m[1] + ' ' + m[2] + ' UTC' : String(ts);
  }

  // since is a table cell with the age of a timestamp (relative to the
  // server's clock, now) and the timestamp itself as tooltip.
  function since(ts, now) {
    const td = el('td', duration((Date.parse(now) - Date.parse(ts)) / 1000) + ' ago', 'age');
    td.title = clock(ts);
    return td;
  }

  function cell(text, cls) {
    return el('td', text === '' || text === undefined || text === null ? '–' : text, cls);
  }

  function idRef(id) {
    return id === null || id === undefined ? cell('') : cell('#' + id);
  }

  function stateCell(state) {
    const td = el('td');
    const known = STATES.includes(state);
    td.appendChild(el('span', state, 'state' + (known ? ' state-' + state : '')));
    return td;
  }

  // lines is a cell with one line per item.
  function lines(items, cls) {
    const td = el('td', null, cls);
    if (!items.length) td.textContent = '–';
    items.forEach((t, i) => {
      if (i > 0) td.appendChild(el('br'));
      td.appendChild(document.createTextNode(String(t)));
    });
    return td;
  }

  // fill replaces a table's rows; an empty list shows one "none" row.
  function fill(table, rows, what) {
    const tbody = byId(table).tBodies[0];
    if (rows.length === 0) {
      const td = el('td', 'No ' + what + ' connected.', 'empty');
      td.colSpan = byId(table).tHead.rows[0].cells.length;
      const tr = el('tr');
      tr.appendChild(td);
      tbody.replaceChildren(tr);
      return;
    }
    tbody.replaceChildren(...rows);
  }

  function row(cells, attrs) {
    const tr = el('tr');
    for (const c of cells) tr.appendChild(c);
    for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = String(v);
    return tr;
  }

  function cardRow(c, now) {
    const ids = c.identities || {};
    const iccid = cell(ids.ICCID || '', 'mono');
    // Identities beyond the three usual ones (IMSI) go under the ICCID.
    for (const k of Object.keys(ids).sort()) {
      if (k === 'ATR' || k === 'EID' || k === 'ICCID') continue;
      iccid.appendChild(el('div', k + ' ' + ids[k], 'extra'));
    }
    return row([
      cell('#' + c.id, 'id'),
      stateCell(c.state),
      iccid,
      cell(ids.EID || '', 'mono'),
      cell(ids.ATR || '', 'mono atr'),
      cell(c.agent, 'name'),
      cell(c.reader, 'name'),
      cell(c.remote_addr, 'mono'),
      since(c.connected_since, now),
      cell(c.apdus, 'num'),
      idRef(c.user),
    ], { card: c.id, state: c.state });
  }

  function agentRow(a, now) {
    const name = a.name === '' ? el('td', '(unnamed)', 'name unnamed') : cell(a.name, 'name');
    return row([
      name,
      cell(a.version),
      cell(a.host, 'mono'),
      cell(a.cards.length + ' (' + a.cards.map((id) => '#' + id).join(', ') + ')'),
      lines(a.readers, 'name'),
      since(a.connected_since, now),
    ]);
  }

  function userRow(u, cards, now) {
    let card = idRef(u.card);
    const c = u.card === null ? undefined : cards.get(u.card);
    if (c && c.identities && c.identities.ICCID) {
      card.appendChild(el('span', ' ICCID ' + c.identities.ICCID, 'muted mono'));
    }
    return row([cell('#' + u.id, 'id'), cell(u.name || '', 'name'), cell(u.remote_addr, 'mono'), since(u.connected_since, now), card], { user: u.id });
  }

  function conflictRow(c) {
    return row([
      cell(clock(c.time)),
      cell(c.identity + ' ' + c.value, 'mono'),
      cell(c.agent, 'name'),
      cell(c.reader, 'name'),
      cell(c.remote_addr, 'mono'),
      cell(c.listed_agent, 'name'),
      cell(c.listed_remote_addr, 'mono'),
    ]);
  }

  function render(s) {
    const cards = new Map(s.cards.map((c) => [c.id, c]));
    setText('version', 'version ' + s.version);
    setText('n-cards', s.cards.length);
    const counts = STATES.map((st) => s.cards.filter((c) => c.state === st).length + ' ' + st);
    setText('n-states', counts.join(' · '));
    setText('n-agents', s.agents.length);
    setText('n-users', s.users.length);
    setText('uptime', duration(s.uptime_seconds));
    setText('started', 'since ' + clock(s.started));
    fill('cards', s.cards.map((c) => cardRow(c, s.time)), 'cards');
    fill('agents', s.agents.map((a) => agentRow(a, s.time)), 'agents');
    fill('users', s.users.map((u) => userRow(u, cards, s.time)), 'users');
    const conflicts = s.conflicts || [];
    byId('conflicts-section').hidden = conflicts.length === 0;
    fill('conflicts', conflicts.map(conflictRow), 'conflicts');
    updates++;
    document.body.dataset.updates = String(updates);
  }

  function setLive(ok, detail) {
    const live = byId('live');
    live.dataset.state = ok ? 'live' : 'offline';
    live.textContent = ok ? 'live · ' + new Date().toLocaleTimeString() : 'offline: ' + detail + ' · retrying';
  }

  // poll fetches the status, then schedules the next poll: never more
  // than one request in flight, however slow the server.
  async function poll() {
    try {
      const r = await fetch('api/v1/status', { cache: 'no-store' });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      render(await r.json());
      setLive(true);
    } catch (e) {
      setLive(false, e && e.message ? e.message : String(e));
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
