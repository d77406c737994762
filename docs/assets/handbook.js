// Three things Material does not do for this site. Each works on the page as built,
// and the page reads the same without them.
(() => {
  const zh = document.documentElement.lang.startsWith("zh");
  const headings = () => [...document.querySelectorAll(
    ".md-content article :is(h1, h2, h3, h4)[id]")];

  // 1. Switching language keeps the section: the pages are translations with their
  // headings in the same order, so the n-th heading here is the n-th heading there.
  // The section is the heading in the address, or the last one scrolled past.
  const KEY = "handbook-section";
  document.addEventListener("click", event => {
    const link = event.target.closest("a[hreflang]");
    if (!link) return;
    const all = headings();
    let index = all.findIndex(h => "#" + h.id === decodeURIComponent(location.hash));
    if (index < 0) {
      const top = document.querySelector(".md-header").getBoundingClientRect().bottom + 8;
      index = all.filter(h => h.getBoundingClientRect().top <= top).length - 1;
    }
    if (index > 0) {  // the first heading is the page's title: the top of the page
      sessionStorage.setItem(KEY, JSON.stringify({path: new URL(link.href).pathname, index}));
    }
  });
  const wanted = JSON.parse(sessionStorage.getItem(KEY) || "null");
  sessionStorage.removeItem(KEY);
  if (wanted && wanted.path === location.pathname && !location.hash) {
    const target = headings()[wanted.index];
    if (target) {
      history.replaceState(null, "", "#" + target.id);
      target.scrollIntoView();
    }
  }

  // 2. The table of contents in the navigation drawer (a phone's menu): Material puts
  // it there for every page but a chapter's first page (its section's index page).
  // There it goes first in the section's list, as a flat list of the right-hand
  // table's links (Material's nested navigation lists slide in as panels on a phone).
  const primary = document.querySelector(".md-nav--primary");
  const links = [...document.querySelectorAll(".md-sidebar--secondary .md-nav--secondary a")];
  const active = primary && primary.querySelector("a.md-nav__link--active");
  const section = active && active.closest(".md-nav__item")
    .querySelector(":scope > nav > .md-nav__list");
  if (section && links.length && !primary.querySelector(".md-nav--secondary")) {
    const contents = document.createElement("li");
    contents.className = "md-nav__item drawer-toc";
    const list = document.createElement("ul");
    list.className = "md-nav__list";
    list.setAttribute("aria-label", zh ? "目录" : "Table of contents");
    for (const link of links) {
      const entry = document.createElement("li");
      entry.className = "md-nav__item";
      let depth = 0;  // how many lists deep the heading sits in the right-hand table
      for (let nav = link.closest("nav"); !nav.classList.contains("md-nav--secondary");
           nav = nav.parentElement.closest("nav")) depth += 1;
      entry.style.paddingLeft = `${depth * 0.6}rem`;
      const copy = document.createElement("a");
      copy.className = "md-nav__link";
      copy.href = link.getAttribute("href");
      copy.textContent = link.textContent.trim();
      entry.append(copy);
      list.append(entry);
    }
    contents.append(list);
    section.prepend(contents);
    // Material scrolls a section's list to its active page; the contents are its top.
    document.getElementById("__drawer")?.addEventListener("change", () => {
      section.scrollTop = 0;
    });
  }

  // 3. A shown source over 40 lines opens collapsed, its first lines visible, with a
  // button to show all of it (the copy button copies all of it either way).
  for (const figure of document.querySelectorAll("figure.shown-source")) {
    const code = figure.querySelector(".highlight code");
    const lines = code ? code.textContent.split("\n").length - 1 : 0;
    if (lines <= 40) continue;
    figure.classList.add("collapsed");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "source-toggle md-button";
    const label = () => figure.classList.contains("collapsed")
      ? (zh ? `展开全部 ${lines} 行` : `Show all ${lines} lines`)
      : (zh ? "收起" : "Show less");
    button.textContent = label();
    button.setAttribute("aria-expanded", "false");
    button.addEventListener("click", () => {
      const collapsed = figure.classList.toggle("collapsed");
      button.textContent = label();
      button.setAttribute("aria-expanded", String(!collapsed));
      if (collapsed) figure.scrollIntoView({block: "nearest"});
    });
    figure.append(button);
  }
})();
