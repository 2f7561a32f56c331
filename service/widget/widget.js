/*
 * chatledger chat widget: one script tag, plain JavaScript, no framework, no build step.
 *
 *   <script src="https://chat.example.com/widget/widget.js" defer></script>
 *
 * Options, as data- attributes of that script tag:
 *   data-api     where the widget API lives (default: "api/" beside this script). An operator who runs
 *                a proxy of their own points this at it; it must answer like /widget/api/ of chatledger.
 *   data-target  a CSS selector of the element to render into (default: a new element after the tag).
 * The host page may set the CSS variable --clw-height on that element (default 560px).
 *
 * The browser holds no API key: the widget API holds it. What the widget keeps (localStorage) is the
 * ticket of the current chat, so a reload finds the chat and its history again.
 *
 * Safety: everything that comes from the server or the visitor reaches the page through textContent,
 * text nodes and attribute values; the widget never parses markup. It renders inside a shadow root, so
 * the host page's styles and the widget's do not mix.
 */
(function () {
  "use strict";

  const script =
    document.currentScript || document.querySelector('script[src*="widget.js"]');
  if (!script) return;
  const apiBase = withSlash(new URL(script.dataset.api || "api/", script.src).href);
  const storageKey = "chatledger-widget:" + apiBase;
  // The newest messages a reload shows; older ones stay in the chat's history.
  const HISTORY_SHOWN = 100;

  const STYLE = `
:host { all: initial; display: block; }
.clw { box-sizing: border-box; display: flex; flex-direction: column; height: var(--clw-height, 560px);
  background: #fff; color: #202124; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
.clw *, .clw *::before, .clw *::after { box-sizing: inherit; }
.clw--boxed { max-width: 420px; margin: 0 auto; border: 1px solid #dadce0; border-radius: 12px; overflow: hidden;
  box-shadow: 0 6px 24px rgba(0, 0, 0, .12); }
.clw--full { width: 100%; border-block: 1px solid #dadce0; }
.clw-header { display: flex; align-items: center; gap: 10px; padding: 12px 16px;
  background: var(--clw-primary); color: var(--clw-on-primary); }
.clw-header .clw-logo { width: 28px; height: 28px; border-radius: 50%; object-fit: cover; background: #fff; }
.clw-title { flex: 1; margin: 0; font-size: 16px; font-weight: 600; }
.clw-new { background: transparent; color: inherit; border: 1px solid currentColor; border-radius: 6px;
  padding: 4px 10px; font: inherit; font-size: 13px; cursor: pointer; }
.clw-header :focus-visible { outline: 3px solid currentColor; outline-offset: 2px; }
.clw-body { flex: 1; display: flex; flex-direction: column; min-height: 0; }
.clw-status { margin: auto; padding: 24px; color: #5f6368; text-align: center; }
.clw-start { flex: 1; display: flex; flex-direction: column; align-items: center; justify-content: center;
  gap: 8px; padding: 24px; text-align: center; overflow-y: auto; }
.clw-start .clw-logo { width: 64px; height: 64px; border-radius: 16px; object-fit: cover; }
.clw-start h2 { margin: 0; font-size: 24px; line-height: 1.2; }
.clw-slogan { margin: 0; font-size: 16px; color: #3c4043; }
.clw-desc { margin: 6px 0 14px; max-width: 34em; color: #5f6368; }
.clw-button { background: var(--clw-primary); color: var(--clw-on-primary); border: 0; border-radius: 8px;
  padding: 10px 18px; font: inherit; font-weight: 600; cursor: pointer; }
.clw-button:disabled, .clw-new:disabled { opacity: .55; cursor: default; }
.clw :focus-visible { outline: 3px solid var(--clw-focus); outline-offset: 2px; }
.clw-log { flex: 1; display: flex; flex-direction: column; gap: 10px; padding: 16px; overflow-y: auto;
  background: #f8f9fa; }
.clw-msg { max-width: 85%; margin: 0; padding: 8px 12px; border-radius: 14px; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.clw-msg--ai { align-self: flex-start; background: #fff; color: #202124; border: 1px solid #dadce0;
  border-bottom-left-radius: 4px; }
.clw-msg--user { align-self: flex-end; background: var(--clw-primary); color: var(--clw-on-primary);
  border-bottom-right-radius: 4px; }
.clw-msg--pending::after { content: "\\258D"; animation: clw-blink 1s steps(2) infinite; }
.clw-cut { display: block; margin-top: 4px; font-size: 12px; color: #5f6368; }
.clw-note { align-self: center; font-size: 12px; color: #5f6368; }
.clw-alert { margin: 8px 16px 0; padding: 8px 12px; border-radius: 8px; background: #fce8e6; color: #a50e0e;
  border: 1px solid #f4c7c3; }
.clw-alert:empty { display: none; }
.clw-form { display: flex; gap: 8px; padding: 12px 16px 4px; border-top: 1px solid #dadce0; background: #fff; }
.clw-input { flex: 1; min-height: 42px; max-height: 120px; padding: 9px 10px; resize: none; font: inherit;
  color: #202124; background: #fff; border: 1px solid #80868b; border-radius: 8px; }
.clw-budget { display: flex; align-items: center; gap: 8px; padding: 4px 16px 10px; font-size: 12px;
  color: #5f6368; background: #fff; }
.clw-bar { flex: 0 0 72px; height: 4px; border-radius: 2px; background: #e8eaed; overflow: hidden; }
.clw-bar > span { display: block; height: 100%; background: var(--clw-accent); }
.clw-sr { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
[hidden] { display: none !important; }
@keyframes clw-blink { to { visibility: hidden; } }
@media (prefers-reduced-motion: reduce) { .clw-msg--pending::after { animation: none; } }
`;

  // --- small helpers ---------------------------------------------------------------------------------
  function withSlash(url) {
    return url.endsWith("/") ? url : url + "/";
  }

  // An element with text and attributes; never markup.
  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  const storage = {
    get() {
      try { return window.localStorage.getItem(storageKey); } catch (_) { return null; }
    },
    set(ticket) {
      try { window.localStorage.setItem(storageKey, ticket); } catch (_) { /* storage off: no resume */ }
    },
    clear() {
      try { window.localStorage.removeItem(storageKey); } catch (_) { /* nothing kept */ }
    },
  };

  // --- colours: the config's primary colour, with text that stays readable on it (WCAG contrast) -----
  function rgb(colour) {
    const match = /^#?([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(String(colour || "").trim());
    if (!match) return null;
    const hex = match[1].length === 3 ? match[1].replace(/./g, "$&$&") : match[1];
    return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
  }

  function luminance(channels) {
    const linear = channels.map((v) => {
      const c = v / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2];
  }

  function contrast(a, b) {
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  }

  function theme(colour) {
    const channels = rgb(colour) || rgb("#1A73E8");
    const primary = "#" + channels.map((v) => v.toString(16).padStart(2, "0")).join("");
    const lum = luminance(channels);
    // White text when it meets WCAG AA (4.5:1) on the primary colour, as brand colours usually
    // expect; otherwise black or white, whichever contrasts more.
    const white = contrast(lum, 1);
    const onPrimary = white >= 4.5 || white >= contrast(lum, 0) ? "#ffffff" : "#000000";
    // Accents drawn on white (focus rings, the budget bar) need 3:1 against it.
    const accent = contrast(lum, 1) >= 3 ? primary : "#202124";
    return { primary, onPrimary, accent };
  }

  // --- the widget API ------------------------------------------------------------------------------
  class WidgetError extends Error {
    constructor(status, body, retryAfter) {
      super((body && body.detail) || "The chat service answered " + status + ".");
      this.status = status;
      this.body = body || {};
      this.retryAfter = retryAfter;
    }
  }

  async function request(method, path, body, accept) {
    const init = { method, headers: { Accept: accept || "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(apiBase + path, init);
    } catch (_) {
      throw new WidgetError(0, { code: "network" });
    }
    if (!response.ok) {
      let payload = null;
      try { payload = await response.json(); } catch (_) { /* not JSON: the status says enough */ }
      throw new WidgetError(response.status, payload, response.headers.get("Retry-After"));
    }
    return response;
  }

  async function getJSON(method, path, body) {
    return (await request(method, path, body)).json();
  }

  // Server-Sent Events from a fetch body: blocks end with a blank line, `event:` names them, `data:`
  // lines carry JSON (service/streaming.py). Comments (`: ping`) are skipped. Read to the end: the
  // server closes the stream right after its last event.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = /\r?\n\r?\n/.exec(buffer)) !== null) {
        const block = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        const event = parseEvent(block);
        if (event) onEvent(event.name, event.data);
      }
    }
  }

  function parseEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line[0] === ":") continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return null;
    try {
      return { name, data: JSON.parse(data.join("\n")) };
    } catch (_) {
      return null;
    }
  }

  // --- what the visitor reads when something goes wrong ---------------------------------------------
  function number(value) {
    return new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 }).format(Math.floor(value));
  }

  function explain(error) {
    const body = error.body || {};
    switch (error.status) {
      case 0:
        return "Could not reach the chat service. Check your connection and try again.";
      case 402:
        return (
          "This chat is out of tokens: " + number(body.tokens_available || 0) + " left, and this " +
          "message needs " + Math.ceil(body.tokens_needed || 0) + ". Send a shorter message or start " +
          "a new chat."
        );
      case 404:
        return "This chat is no longer available. Start a new chat to go on.";
      case 429:
        return "Too many messages right now. Try again in " + (error.retryAfter || "a few") + " seconds.";
      case 502:
      case 504:
        return "The assistant did not answer. Nothing was charged; please try again.";
      case 503:
        return "The chat is not available right now. Please try again shortly.";
      default:
        return body.detail || "Something went wrong (" + error.status + "). Please try again.";
    }
  }

  // --- the widget ------------------------------------------------------------------------------------
  class Widget {
    constructor(host) {
      this.root = host.attachShadow({ mode: "open" });
      if ("adoptedStyleSheets" in this.root && typeof CSSStyleSheet.prototype.replaceSync === "function") {
        const sheet = new CSSStyleSheet();
        sheet.replaceSync(STYLE);
        this.root.adoptedStyleSheets = [sheet];
      } else {
        this.root.append(el("style", { text: STYLE }));
      }
      this.frame = el("div", { class: "clw clw--boxed" });
      this.body = el("div", { class: "clw-body" }, [
        el("p", { class: "clw-status", role: "status", text: "Loading the chat\u2026" }),
      ]);
      this.frame.append(this.body);
      this.root.append(this.frame);
      this.ticket = null;
      this.busy = false;
    }

    async boot() {
      try {
        this.config = await getJSON("GET", "config");
      } catch (error) {
        this.body.replaceChildren(el("p", { class: "clw-status", role: "alert", text: explain(error) }));
        return;
      }
      this.build();
      const ticket = storage.get();
      let problem = "";
      if (ticket) {
        try {
          await this.resume(ticket);
          return;
        } catch (error) {
          // A chat the server no longer knows (deleted, or the widget's key rotated) starts over.
          if (error.status === 404) storage.clear();
          else problem = explain(error);
        }
      }
      this.showStart();
      this.showAlert(problem);
    }

    build() {
      const config = this.config;
      const colours = theme(config.primary_color);
      this.frame.style.setProperty("--clw-primary", colours.primary);
      this.frame.style.setProperty("--clw-on-primary", colours.onPrimary);
      this.frame.style.setProperty("--clw-accent", colours.accent);
      this.frame.style.setProperty("--clw-focus", colours.accent);
      this.frame.className = "clw " + (config.is_full_width ? "clw--full" : "clw--boxed");
      const name = config.header_text || config.company_name || config.agent_name;
      this.frame.setAttribute("role", "region");
      this.frame.setAttribute("aria-label", name + " chat");

      this.newButton = el("button", { type: "button", class: "clw-new", text: "New chat" });
      this.newButton.addEventListener("click", () => this.newChat());
      this.frame.replaceChildren(
        el("div", { class: "clw-header" }, [
          this.logo("", 28),
          el("p", { class: "clw-title", text: name }),
          this.newButton,
        ]),
        this.body,
      );
      this.body.replaceChildren();
    }

    // The config's logo, if it is an http(s) URL; decorative next to a name that says the same.
    logo(alt, size) {
      const url = this.config.logo_url;
      if (!url) return null;
      let parsed;
      try { parsed = new URL(url, document.baseURI); } catch (_) { return null; }
      if (parsed.protocol !== "https:" && parsed.protocol !== "http:") return null;
      return el("img", { class: "clw-logo", src: parsed.href, alt, width: size, height: size });
    }

    showStart() {
      const config = this.config;
      this.ticket = null;
      this.newButton.hidden = true;
      this.startButton = el("button", { type: "button", class: "clw-button", text: "Start chat" });
      this.startButton.addEventListener("click", () => this.startChat());
      this.alert = el("div", { class: "clw-alert", role: "alert" });
      this.body.replaceChildren(
        el("section", { class: "clw-start", "aria-labelledby": "clw-start-title" }, [
          this.logo(config.company_name + " logo", 64),
          el("h2", { id: "clw-start-title", text: config.start_page_title || config.agent_name }),
          config.start_page_slogan ? el("p", { class: "clw-slogan", text: config.start_page_slogan }) : null,
          config.chat_first_page_description
            ? el("p", { class: "clw-desc", text: config.chat_first_page_description })
            : null,
          this.startButton,
          this.alert,
        ]),
      );
    }

    async startChat() {
      this.startButton.disabled = true;
      try {
        const chat = await getJSON("POST", "chats/");
        storage.set(chat.ticket);
        this.showChat(chat, []);
        this.input.focus();
      } catch (error) {
        this.startButton.disabled = false;
        this.showAlert(explain(error));
      }
    }

    async resume(ticket) {
      const path = "chats/" + encodeURIComponent(ticket);
      const chat = await getJSON("GET", path);
      let page = await getJSON("GET", path + "/messages/?limit=" + HISTORY_SHOWN);
      if (page.total > page.items.length) {
        const offset = page.total - HISTORY_SHOWN;
        page = await getJSON("GET", path + "/messages/?limit=" + HISTORY_SHOWN + "&offset=" + offset);
      }
      this.showChat(chat, page.items, page.total);
    }

    newChat() {
      if (this.busy) return;
      storage.clear();
      this.showStart();
      this.startButton.focus();
    }

    showChat(chat, messages, total) {
      const config = this.config;
      this.ticket = chat.ticket;
      this.newButton.hidden = false;
      const agent = config.agent_name || "the assistant";
      this.log = el("div", {
        class: "clw-log", role: "log", "aria-live": "polite", "aria-label": "Conversation with " + agent,
      });
      if (total > messages.length) {
        this.log.append(el("p", {
          class: "clw-note", text: "Showing the last " + messages.length + " of " + total + " messages.",
        }));
      }
      if (config.welcome_message) this.addMessage(false, config.welcome_message).classList.add("clw-welcome");
      for (const message of messages) {
        this.addMessage(message.is_user, message.content, message.truncated);
      }
      this.alert = el("div", { class: "clw-alert", role: "alert" });
      this.input = el("textarea", {
        id: "clw-input", class: "clw-input", rows: "1", placeholder: "Type your message\u2026",
        maxlength: String(config.max_content_chars || 16000), autocomplete: "off",
      });
      this.input.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this.form.requestSubmit();
        }
      });
      this.sendButton = el("button", { type: "submit", class: "clw-button", text: "Send" });
      this.form = el("form", { class: "clw-form" }, [
        el("label", { for: "clw-input", class: "clw-sr", text: "Message to " + agent }),
        this.input,
        this.sendButton,
      ]);
      this.form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.send();
      });
      this.barFill = el("span");
      this.budget = el("span", { class: "clw-budget-text" });
      this.body.replaceChildren(
        this.log,
        this.alert,
        this.form,
        el("div", { class: "clw-budget", role: "status" }, [
          el("span", { class: "clw-bar", "aria-hidden": "true" }, [this.barFill]),
          this.budget,
        ]),
      );
      this.setBudget(chat.token_limit, chat.token_used);
      this.scrollDown(true);
    }

    setBudget(limit, used) {
      const left = Math.max(0, limit - used);
      this.budget.textContent = number(left) + " of " + number(limit) + " tokens left";
      this.barFill.style.width = (limit > 0 ? Math.round((100 * left) / limit) : 0) + "%";
    }

    addMessage(isUser, text, truncated) {
      // The text node is kept on the bubble so a streamed reply grows by appending to it.
      const content = document.createTextNode(text);
      const bubble = el("div", { class: "clw-msg " + (isUser ? "clw-msg--user" : "clw-msg--ai") }, [
        el("span", { class: "clw-sr", text: isUser ? "You: " : (this.config.agent_name || "Assistant") + ": " }),
        el("span", { class: "clw-text" }, [content]),
      ]);
      bubble.content = content;
      if (truncated) bubble.append(el("span", { class: "clw-cut", text: "(reply cut short)" }));
      this.log.append(bubble);
      this.scrollDown(isUser);
      return bubble;
    }

    scrollDown(always) {
      const log = this.log;
      if (always || log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;
    }

    showAlert(text) {
      if (this.alert) this.alert.textContent = text;
    }

    setBusy(busy) {
      this.busy = busy;
      this.sendButton.disabled = busy;
      this.newButton.disabled = busy;
      this.log.setAttribute("aria-busy", busy ? "true" : "false");
    }

    async send() {
      const text = this.input.value;
      if (this.busy || !text.trim()) return;
      this.setBusy(true);
      this.showAlert("");
      this.input.value = "";
      const userBubble = this.addMessage(true, text);
      const reply = this.addMessage(false, "");
      reply.classList.add("clw-msg--pending");
      const undo = (message) => {
        userBubble.remove();
        reply.remove();
        if (!this.input.value) this.input.value = text;
        this.showAlert(message);
      };
      try {
        const path = "chats/" + encodeURIComponent(this.ticket) + "/messages/";
        const response = await request("POST", path, { content: text }, "text/event-stream");
        const outcome = await this.relay(response, reply);
        if (!outcome.done && !outcome.error && outcome.message) reply.content.data = outcome.message.content;
        if (outcome.error) undo(explain(new WidgetError(outcome.error.status, outcome.error)));
        else if (!outcome.done && !outcome.message) {
          this.showAlert("The reply was cut off. Reload to see what was saved.");
        }
      } catch (error) {
        if (error.status === 402 && error.body.token_limit !== undefined) {
          this.setBudget(error.body.token_limit, error.body.token_used);
        }
        if (error.status === 404) storage.clear();
        undo(explain(error));
      } finally {
        reply.classList.remove("clw-msg--pending");
        this.setBusy(false);
        this.input.focus();
      }
    }

    // Relays a streamed reply into its bubble; answers which event ended the stream.
    async relay(response, reply) {
      const outcome = { done: false, error: null, message: null };
      if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
        // A proxy that answers with the saved message as JSON (an Idempotency-Key replay) is fine too.
        outcome.message = await response.json();
        return outcome;
      }
      await readEvents(response, (name, data) => {
        if (name === "delta") {
          reply.content.appendData(data.content || "");
          this.scrollDown(false);
        } else if (name === "done") {
          // The saved message is the authority on what was said.
          reply.content.data = data.message.content;
          this.setBudget(data.token_limit, data.token_used);
          outcome.done = true;
        } else if (name === "error") {
          outcome.error = data;
        }
      });
      return outcome;
    }
  }

  function mount() {
    const selector = script.dataset.target;
    let host = selector ? document.querySelector(selector) : null;
    if (!host) {
      host = document.createElement("div");
      host.className = "chatledger-widget";
      if (script.parentNode && script.parentNode !== document.head) {
        script.parentNode.insertBefore(host, script.nextSibling);
      } else {
        document.body.append(host);
      }
    }
    new Widget(host).boot();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
  else mount();
})();
