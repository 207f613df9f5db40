// Drives tokenrelay's inspector in the system Chromium (puppeteer-core, no browser download).
// Usage: node clicks.js CHROMIUM TRAP_PORT URL_REPLAYABLE URL_NOT_REPLAYABLE SCREENSHOT|-
// On URL_REPLAYABLE it clicks "replay", waits for the new exchange, clicks "compare with
// previous" and reads the comparison; on URL_NOT_REPLAYABLE it reads why replay is off.
// Prints one JSON object with what the page showed.
const puppeteer = require('puppeteer-core');

const [chromium, trapPort, urlReplay, urlOff, screenshot] = process.argv.slice(2);

(async () => {
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--hide-scrollbars',
      '--disable-features=NetworkTimeServiceQuerying,PreconnectToSearch',
      '--gaia-url=http://127.0.0.1:9', '--google-base-url=http://127.0.0.1:9',
      `--proxy-server=http://127.0.0.1:${trapPort}`, '--window-size=1200,900',
    ],
    defaultViewport: { width: 1200, height: 900 },
  });
  const out = {};
  try {
    const page = await browser.newPage();
    const text = (sel) => page.$eval(sel, (e) => e.textContent);
    await page.goto(urlReplay, { waitUntil: 'load' });
    await page.waitForSelector('#replay:not([disabled])', { timeout: 20000 });
    out.before = await text('#detail h2');
    await page.click('#replay');
    await page.waitForFunction(() => /replay of #/.test(document.querySelector('#detail h2')?.textContent ?? ''), { timeout: 20000 });
    out.after = await text('#detail h2');
    out.note = await text('#note');
    await page.waitForSelector('#compare:not([disabled])', { timeout: 20000 });
    await page.click('#compare');
    await page.waitForSelector('#detail .compare .card', { timeout: 20000 });
    out.compare = await text('#detail .compare');
    out.rows = await text('#rows');
    if (screenshot !== '-') await page.screenshot({ path: screenshot });

    const other = await browser.newPage();
    await other.goto(urlOff, { waitUntil: 'load' });
    await other.waitForFunction(() => /replay is off/.test(document.querySelector('#note')?.textContent ?? ''), { timeout: 20000 });
    const read = (sel) => other.$eval(sel, (e) => e.textContent);
    out.off = { disabled: await other.$eval('#replay', (e) => e.disabled), label: await read('#replay'), note: await read('#note') };
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
