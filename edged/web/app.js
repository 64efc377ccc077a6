// The dashboard's entry point (no build step, no framework): each section sets itself up on its own, so
// one that fails (say the event stream is not served) leaves the others working.

import { setupLive } from "./live.js";
import { setupStatus } from "./status.js";
import { setupTry } from "./try.js";

function failed(section) {
  return (exc) => {
    const box = document.getElementById(section);
    box.append(Object.assign(document.createElement("p"), { className: "error", textContent: `${exc.code || ""} ${exc.message}` }));
  };
}

setupStatus();
setupTry().catch(failed("try"));
setupLive().catch(failed("live"));
