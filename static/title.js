// A job's progress where a waiting person looks: the tab title ("[42%] 3.0 s left · zimage-sse", then
// "Done · <prompt>"), a polite announcement when the phase changes or the job ends (not every step), and
// an optional desktop notification when it ends while the tab is hidden. The server renders every text
// (the panel's data-title, templates/_job.html); this file only copies it where it belongs.
(() => {
  const SUFFIX = " · zimage-sse";
  const OPT_IN = "zimage-sse:notify";
  const ENDED = new Set(["done", "failed", "cancelled"]);
  const canNotify = () => "Notification" in window && Notification.permission !== "denied";

  function follow(source) {
    let last = null;
    const update = () => {
      const panel = source.querySelector(".job-panel");
      if (!panel) return;
      document.title = panel.dataset.title + SUFFIX;
      const state = `${panel.dataset.status}|${panel.dataset.phase}`;
      if (last !== null && state !== last) changed(panel);
      last = state;
    };
    update();
    new MutationObserver(update).observe(source, { childList: true, subtree: true });
  }

  function changed(panel) {
    const ended = ENDED.has(panel.dataset.status);
    const said = panel.querySelector(ended ? ".summary, .error, .cancelled" : ".phase");
    const text = said ? said.textContent.replace(/\s+/g, " ").trim() : panel.dataset.title;
    const region = document.querySelector("[data-announce]");
    if (region) region.textContent = text;
    if (ended && document.hidden && localStorage.getItem(OPT_IN) === "1" && canNotify()
        && Notification.permission === "granted") {
      new Notification(panel.dataset.title, { body: text, icon: "/static/favicon.svg" });
    }
  }

  function offerNotifications(button) {
    if (!canNotify()) return;  // unsupported or refused: the button stays hidden
    const show = () => {
      const on = localStorage.getItem(OPT_IN) === "1" && Notification.permission === "granted";
      button.textContent = on ? "Notifications on (click to turn off)" : "Notify me when it ends";
      button.setAttribute("aria-pressed", String(on));
    };
    button.addEventListener("click", async () => {
      if (localStorage.getItem(OPT_IN) === "1" && Notification.permission === "granted") {
        localStorage.removeItem(OPT_IN);
      } else if ((await Notification.requestPermission()) === "granted") {
        localStorage.setItem(OPT_IN, "1");
      }
      show();
    });
    show();
    button.hidden = false;
  }

  document.querySelectorAll("[data-title-source]").forEach(follow);
  document.querySelectorAll("[data-notify]").forEach(offerNotifications);
})();
