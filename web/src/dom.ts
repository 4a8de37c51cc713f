// Small DOM helpers: the console builds its pages with these rather than
// with innerHTML, so that no server text is ever parsed as markup.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const svgNS = "http://www.w3.org/2000/svg";

export function s(tag: string, attrs: Attrs = {}, ...children: Child[]): SVGElement {
  const el = document.createElementNS(svgNS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el: Element, attrs: Attrs): void {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") {
      el.addEventListener(k.replace(/^on/, ""), v);
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
}

function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// replace swaps el's content for children.
export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

// when formats a timestamp for people, in their own time zone.
export function when(d: Date | undefined): string {
  return d ? d.toLocaleString() : "—";
}

// duration is the time between two timestamps in words a person reads
// at a glance.
export function duration(from: Date | undefined, to: Date | undefined): string {
  if (!from || !to) return "—";
  const ms = to.getTime() - from.getTime();
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function statusBadge(status: string): HTMLElement {
  return h("span", { class: `badge status-${status.replace(/[^a-z_]/g, "")}` }, status || "unknown");
}

// copyButton copies text to the clipboard, falling back to selecting it
// where the clipboard API is not offered (plain HTTP on another host).
export function copyButton(text: string, label = "Copy"): HTMLButtonElement {
  const btn = h("button", { type: "button", class: "copy", "data-copy": text }, label);
  btn.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      btn.textContent = "Copied";
    } catch {
      const range = document.createRange();
      const target = btn.previousElementSibling;
      if (target) {
        range.selectNodeContents(target);
        getSelection()?.removeAllRanges();
        getSelection()?.addRange(range);
      }
      btn.textContent = "Press Ctrl+C";
    }
    setTimeout(() => (btn.textContent = label), 1500);
  });
  return btn;
}
