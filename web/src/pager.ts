import { h } from "./dom";

// pager links to the neighbouring pages of a list of total items.
export function pager(page: number, size: number, total: number, href: (page: number) => string): HTMLElement {
  const pages = Math.max(1, Math.ceil(total / size));
  return h("nav", { class: "pager", "aria-label": "pages" },
    page > 1 ? h("a", { href: href(page - 1), rel: "prev" }, "← Previous") : h("span", { class: "muted" }, "← Previous"),
    h("span", { class: "page-info" }, `Page ${page} of ${pages} · ${total} in all`),
    page < pages ? h("a", { href: href(page + 1), rel: "next" }, "Next →") : h("span", { class: "muted" }, "Next →"));
}
